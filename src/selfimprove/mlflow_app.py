"""MLflow's own server, opening where a user of this product works: ``mlflow server --app-name selfimprove``.

MLflow 3.17's UI has two workflows, GenAI (traces, prompts, gateway) and machine learning (training runs, charts,
model registry). Which one a page shows comes from the URL's ``?workflowType=`` or, without it, from the browser's
``localStorage["mlflow.workflowType_v1"]``, whose default is GenAI; the experiment's ``mlflow.experimentKind`` tag is
not read while that navigation is on (``shouldEnableWorkflowBasedNavigation`` is fixed to true in the bundle), and
the server has no option for the default. So a fresh browser landed on Home with Tracing/Prompts/AI Gateway and no
registry, and every page opened without the URL parameter (compare, registry, a run clicked in a list) flipped back
to GenAI.

This app is MLflow's server (its FastAPI app around its Flask app, the same routes and stores) registered through
MLflow's documented plugin point for servers (the ``mlflow.app`` entry point, as ``basic-auth`` is) with one change:
the page it serves sets the workflow to machine learning when the browser has not chosen one (and keeps the GenAI
assistant's panel from opening by itself on a first visit), and sends the bare root (``/`` or ``#/``) to the
experiments list. A user who switches to GenAI in the UI keeps that choice.
"""

from __future__ import annotations

from typing import Any

WORKFLOW_KEY = "mlflow.workflowType_v1"  # MLflow's useLocalStorage({key: "mlflow.workflowType", version: 1})

# the GenAI assistant's chat panel opens by itself on a browser's first visit and covers a third of the runs page
ASSISTANT_KEY = "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1"

_SCRIPT = (
    "<script>(function(){try{var s=window.localStorage;"
    "if(!s.getItem(%r)){s.setItem(%r,JSON.stringify('machine_learning'));}"
    "if(!s.getItem(%r)){s.setItem(%r,'true');}"
    "var h=window.location.hash;if(h===''||h==='#'||h==='#/'){window.location.replace('#/experiments');}"
    "}catch(e){}})();</script>" % (WORKFLOW_KEY, WORKFLOW_KEY, ASSISTANT_KEY, ASSISTANT_KEY)
)


def index_html(original: str) -> str:
    """MLflow's index.html with the default-workflow script first in <head> (before the app's bundle runs).

    >>> "machine_learning" in index_html("<html><head><title>MLflow</title></head></html>")
    True
    """
    return original.replace("<head>", "<head>" + _SCRIPT, 1)


def create_app() -> Any:
    """The ASGI app ``mlflow server --app-name selfimprove`` runs (a factory, as MLflow's plugin point expects)."""
    import os

    from flask import Response
    from mlflow.server import app as flask_app
    from mlflow.server.fastapi_app import app  # wraps flask_app: the view replaced below serves its pages

    index = os.path.join(flask_app.static_folder, "index.html")
    original = flask_app.view_functions["serve"]

    def serve() -> Any:
        if not os.path.exists(index):
            return original()
        with open(index, encoding="utf-8") as f:
            return Response(index_html(f.read()), mimetype="text/html")

    flask_app.view_functions["serve"] = serve
    return app
