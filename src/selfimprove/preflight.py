"""Checks that fail in seconds, before any training or sampling: model path, data, tracking server, workspace.

``preflight(config, project)`` returns a list of problems (empty = good to go); the loop refuses to start
while it is non-empty, so a typo in a path costs seconds, not a round.
"""

from __future__ import annotations

from pathlib import Path

from selfimprove.config import Config


def preflight(config: Config, project: str | Path = ".", check_workspace: bool = True) -> list[str]:
    project = Path(project)
    problems: list[str] = []
    params = project / "params.yaml"
    if check_workspace and params.exists() and not any(line.startswith("eval_rounds:") for line in params.read_text().splitlines()):
        problems.append(f"{params}: no eval_rounds key; DVC's evaluate stage iterates over it. Add "
                        "'eval_rounds: {r0: {}, <<: *rounds}' and anchor rounds ('rounds: &rounds')")
    mc = config.model
    if mc.source == "path":
        p = Path(mc.path)  # type: ignore[arg-type]
        if not p.is_absolute():
            p = project / p
        if not (p / "config.json").exists():
            problems.append(f"model.path: {p} not found or has no config.json (a Hugging Face model folder is needed)")
    try:
        from selfimprove.stages.common import eval_problems, problem_set

        pset = problem_set(config)
        problems += verifier_mismatches(config, pset)
        if not eval_problems(config, pset):
            problems.append(f"problems: problem set {config.problems.name!r} has no evaluation problems "
                            f"(evaluate.difficulties={config.evaluate.difficulties})")
    except Exception as e:  # noqa: BLE001 - report every loader error as a preflight problem
        problems.append(f"problems.{config.problems.name}: {e}")
    if config.tracking.enabled:
        from selfimprove.tracking import TrackingError, check_server, resolve_uri

        uri, _ = resolve_uri(config, project)
        try:
            check_server(uri, config.tracking.connect_timeout_s)
        except TrackingError as e:
            problems.append(f"tracking.uri: {e}")
    ws = project / config.workspace
    if check_workspace:
        try:
            ws.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            problems.append(f"workspace: cannot create {ws}: {e}")
    if not config.rounds:
        problems.append("rounds: no rounds in params.yaml (add r1: {prev: r0, ...} or run 'selfimprove rounds 2')")
    return problems


def verifier_mismatches(config: Config, pset: object) -> list[str]:
    """Verifier settings that would grade this problem set's answers with a reader that cannot read them (a
    ``reasoning_gym`` task graded by ``exact_match``, GSM8K by ``exact_match``): refused, so no run reports
    a nonsense accuracy."""
    from selfimprove.verifiers import VERIFIERS

    name = config.problems.name
    ok = pset.compatible_verifiers()  # type: ignore[attr-defined]
    declared = pset.gold_verifier()  # type: ignore[attr-defined]
    out = []
    fix = f"{name} problems (the set declares {declared!r}" + (
        f"; {', '.join(repr(v) for v in ok if v != declared)} also read them)" if len(ok) > 1 else ")")
    ev = config.evaluate.verifier
    if ev and ev not in ok:
        out.append(f"evaluate.verifier = {ev!r} cannot grade {fix}; remove evaluate.verifier to use the set's")
    rv = config.verify.verifier
    if rv == "majority_vote":
        ans = config.verify.majority_vote.answer
        if ans not in ok:
            out.append(f"verify.majority_vote.answer = {ans!r} cannot read the answers of {fix}; set it to {declared!r}")
    elif getattr(VERIFIERS.get(rv), "needs_gold", False) and rv != "judge" and rv not in ok:
        out.append(f"verify.verifier = {rv!r} cannot grade {fix}")
    return out
