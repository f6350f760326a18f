"""The pre-run checks every entry point shares (the CLI and the flow a UI form, a schedule or a work pool starts)."""

from __future__ import annotations

import inspect

import pytest

from selfimprove.config import Config, ConfigError
from selfimprove.prerun import check_resume, check_rounds


def test_resume_refuses_whatever_would_change_the_params_and_names_it() -> None:
    check_resume(None, None, params=False, name=False)
    with pytest.raises(ConfigError, match=r"drop the overrides \(-S\), --rounds, --name$"):
        check_resume(["seed=1"], 2, params=False, name=True)


def test_rounds_are_refused_for_a_curriculum_with_the_bound_to_use_instead() -> None:
    check_rounds(Config(), 3)
    with pytest.raises(ConfigError, match="loop.max_rounds=3 instead of --rounds"):
        check_rounds(Config.model_validate({"loop": {"policy": "curriculum"}}), 3)


def test_the_cli_and_the_flow_call_the_same_checks() -> None:
    import flows.loop
    import selfimprove.cli

    for module in (selfimprove.cli, flows.loop):
        src = inspect.getsource(module)
        assert "check_resume(" in src and "check_rounds(" in src and "check_preflight(" in src, module.__name__
