"""The MLflow model registry, by job apart from the run lifecycle: one version per distinct round model (found by
the DVC hash of its folder, tag ``selfimprove.model_md5``), aliases, the metric a version was registered with.
``MlflowStore`` (``selfimprove.tracking``) carries these methods; ``selfimprove.registration`` decides promotion."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from selfimprove.tracker import TrackingError

log = logging.getLogger("selfimprove.tracking")

TAG = "selfimprove."


class ModelRegistry:
    """Registry methods of the store; they use the store's ``client``, ``config`` and ``guard``."""

    client: Any
    config: Any

    def _versions(self) -> list[Any]:
        name = self.config.tracking.registered_model
        try:
            with self.guard():
                return list(self.client.search_model_versions(f"name = '{name}'", max_results=1000))
        except TrackingError:
            raise
        except Exception:  # noqa: BLE001 - no such registered model yet
            return []

    def register(self, run_id: str, model_dir: Path, model_md5: str | None, description: str,
                 tags: Mapping[str, str]) -> str | None:
        """Register the round's model once per distinct model; a retried or restored round gets its version."""
        if not self.config.tracking.log_model:
            return None
        from selfimprove.checkpoint import members

        name = self.config.tracking.registered_model
        for mv in self._versions():
            if (model_md5 and mv.tags.get(TAG + "model_md5") == model_md5) or mv.tags.get(TAG + "run_id") == run_id:
                if mv.tags.get(TAG + "run_id") != run_id and description not in (mv.description or ""):
                    # the same bytes, evaluated by another run (another eval seed or problem set): its numbers join
                    # the version's description instead of leaving the first evaluation's as the only ones
                    with self.guard():
                        self.client.update_model_version(
                            name, mv.version, description=f"{mv.description or ''}\nEvaluated again: {description}")
                return mv.version
        group = members(model_dir)
        if not (group[0] / "config.json").exists():
            log.info("model %s is a pointer to an external model (model_ref.json); not registering it", model_dir)
            return None
        import mlflow

        size_mb = sum(f.stat().st_size for m in group for f in m.rglob("*") if f.is_file()) / 2**20
        by_reference = size_mb > self.config.tracking.model_copy_max_mb
        with self.guard():
            if by_reference:  # the bytes stay in DVC's cache (content-addressed, shared by every run): stored once
                ref = {"dvc_path": Path(model_dir).as_posix(), "dvc_md5": model_md5, "size_mb": round(size_mb, 1),
                       "experiment": tags.get(TAG + "experiment"),
                       "fetch": f"dvc exp apply {tags.get(TAG + 'experiment')} (then {Path(model_dir).as_posix()}), "
                                f"or dvc get . {Path(model_dir).as_posix()} --rev <the experiment's commit>"}
                self.client.log_dict(run_id, ref, "model_ref/dvc.json")
                info = type("Ref", (), {"model_uri": f"runs:/{run_id}/model_ref", "model_id": None})()
                description = (f"{description} Weights ({size_mb:.0f} MB) are stored once, in DVC: "
                               f"{Path(model_dir).as_posix()} of experiment {tags.get(TAG + 'experiment')} "
                               f"(md5 {model_md5}); model_ref/dvc.json says how to fetch them.")
            else:
                with mlflow.start_run(run_id=run_id, nested=True):
                    info = _log_transformers(group[0])
                for other in group[1:]:  # the other ensemble members travel with the run
                    self.client.log_artifacts(run_id, str(other), f"ensemble/{other.name}")
            try:
                self.client.get_registered_model(name)
            except Exception:  # noqa: BLE001
                with contextlib.suppress(Exception):  # created concurrently
                    self.client.create_registered_model(
                        name, description="Models of selfimprove loops: one version per distinct round model.")
            mv = self.client.create_model_version(
                name, source=info.model_uri, run_id=run_id, description=description,
                tags={TAG + "run_id": run_id, TAG + "model_md5": model_md5 or "", **tags},
                model_id=getattr(info, "model_id", None),
            )
        return mv.version

    def alias_version(self, alias: str) -> Any | None:
        try:
            with self.guard():
                return self.client.get_model_version_by_alias(self.config.tracking.registered_model, alias)
        except TrackingError:
            raise
        except Exception:  # noqa: BLE001 - no such alias yet
            return None

    def set_alias(self, version: str, alias: str = "best") -> None:
        with self.guard():
            self.client.set_registered_model_alias(self.config.tracking.registered_model, alias, version)

    def version_metric(self, mv: Any, key: str) -> float | None:
        with self.guard():
            return self.client.get_run(mv.run_id).data.metrics.get(key)


def _log_transformers(model_dir: Path) -> Any:
    import mlflow.transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import selfimprove.models  # noqa: F401 - registers the tiny model class with the Auto* factories

    # Local models have no hub model card or license to look up; those warnings are noise here.
    logging.getLogger("mlflow.transformers").setLevel(logging.ERROR)
    # Components rather than a folder path: MLflow 3.17's path-based flavor config breaks on transformers 5.
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    # Explicit requirements: the default probe imports torchvision (a CUDA build on PyPI).
    reqs = [f"torch=={_version('torch').split('+')[0]}", f"transformers=={_version('transformers')}", "tokenizers", "safetensors"]
    return mlflow.transformers.log_model(
        transformers_model={"model": model, "tokenizer": tok}, name="model", task="text-generation", pip_requirements=reqs
    )


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)


# MLflow 3's UI opens every experiment on its GenAI (traces) view unless the link asks for the training view; the
# experiment tag mlflow.experimentKind is only read by older layouts.
