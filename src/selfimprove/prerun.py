"""The checks before a run writes anything, shared by every entry point (the CLI and the Prefect flow that a UI
form, a Quick run, a schedule or a work pool starts), so each says the same thing in the same words."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfimprove.config import ConfigError


def check_resume(overrides: list[str] | None, rounds: int | None, **other: Any) -> None:
    """A resumed run continues with the params it started with: nothing may change them."""
    changed = [k for k, v in other.items() if v]
    if overrides or rounds is not None or changed:
        raise ConfigError("--resume continues a run with the params it started with: drop "
                          + ", ".join(["the overrides (-S)"] * bool(overrides) + ["--rounds"] * (rounds is not None)
                                      + [f"--{k.replace('_', '-')}" for k in changed]))


def check_rounds(config: Any, rounds: int | None) -> None:
    """``--rounds`` writes a fixed list; a curriculum decides its rounds itself."""
    if rounds is not None and config.loop.policy == "curriculum":
        raise ConfigError(f"loop.policy is curriculum: the loop decides its rounds; bound them with "
                          f"-S loop.max_rounds={rounds} instead of --rounds")


def check_preflight(config: Any, project: str | Path, **kwargs: Any) -> None:
    """``selfimprove.preflight``'s problems (servers, disk, verifier and problem set agreeing) as one error."""
    from selfimprove.preflight import preflight

    problems = preflight(config, project, **kwargs)
    if problems:
        raise ConfigError("preflight failed:\n  " + "\n  ".join(problems))
