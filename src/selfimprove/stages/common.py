"""Helpers shared by the stage functions: problem sets, verifiers, samplers, reports, scoring."""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from selfimprove.config import Config
from selfimprove.io import write_json
from selfimprove.problems import PROBLEM_SETS, ProblemSet
from selfimprove.samplers import SAMPLERS, Sampler, SamplingParams
from selfimprove.types import Problem
from selfimprove.verifiers import VERIFIERS, AnswerVerifier, Verifier

log = logging.getLogger(__name__)

REPORT = "stage_report.json"


def is_timing(key: str) -> bool:
    """Keys that measure time (they vary between identical runs).

    >>> [is_timing(k) for k in ("sample/seconds", "sample/tokens_per_s", "seconds", "sample/tokens")]
    [True, True, True, False]
    """
    return key.endswith("seconds") or key.endswith("_per_s")


def without_timings(obj: Any) -> Any:
    """``obj`` with every timing key removed, recursively (what goes into DVC-tracked outputs)."""
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if not (isinstance(k, str) and is_timing(k))}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


class StageReport(BaseModel):
    """What a stage did: its metrics (also logged to MLflow) and where its outputs are.

    ``write`` leaves timings out: a stage report lives inside a DVC output, and the same inputs must give the
    same bytes. Timings go to MLflow (and to the Prefect logs)."""

    stage: str
    round: int
    seconds: float = 0.0
    skipped: bool = False
    metrics: dict[str, float] = Field(default_factory=dict)
    outputs: dict[str, str] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)

    def write(self, directory: Path) -> None:
        data = self.model_dump(mode="json", exclude={"seconds"})
        write_json(directory / REPORT, without_timings(data))

    def summary(self) -> str:
        """One line for the logs: the stage's main counts."""
        keep = {k.split("/", 1)[-1]: v for k, v in self.metrics.items()
                if "/" in k and k.count("/") == 1 and not is_timing(k) and k.split("/", 1)[0] == self.stage}
        parts = [f"{k} {v:.3g}" if isinstance(v, float) and not float(v).is_integer() else f"{k} {int(v)}"
                 for k, v in list(keep.items())[:6]]
        return ", ".join(parts)


def read_report(directory: Path) -> StageReport | None:
    p = Path(directory) / REPORT
    if not p.exists():
        return None
    return StageReport.model_validate_json(p.read_text())


@contextmanager
def timer() -> Iterator[dict[str, float]]:
    t = {"start": time.perf_counter()}
    yield t
    t["seconds"] = time.perf_counter() - t["start"]


def runtime_env(config: Config) -> dict[str, str]:
    """The environment defaults of a process that runs stages (``selfimprove.envdefaults``)."""
    from selfimprove.envdefaults import defaults

    return defaults(config.model.source)


def setup_runtime(config: Config) -> None:
    """Thread count and offline defaults; call once per process before heavy work."""
    for k, v in runtime_env(config).items():
        os.environ.setdefault(k, v)
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()  # per-tensor load/save bars drown the round's own progress
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.set_flush_denormal(True)
    if torch.get_num_threads() > 1:  # one thread cannot oversubscribe much; more can, tenfold
        warning = oversubscribed(torch.get_num_threads())
        if warning:
            log.warning(warning)


def oversubscribed(threads: int, cores: int | None = None, load: float | None = None) -> str | None:
    """A warning when this process's torch threads and what else runs here now ask for more than the cores: two
    torch processes with 2 threads each on this 2-core machine each ran about 10x slower than alone (measured).
    ``load``: cores busy with other work (default: sampled for 0.2 s, before this stage computes anything).

    >>> oversubscribed(2, cores=2, load=1.5) is not None, oversubscribed(1, cores=2, load=0.5)
    (True, None)
    """
    cores = cores or os.cpu_count() or 1
    if load is None:
        try:
            import psutil

            load = psutil.cpu_percent(interval=0.2) / 100 * cores
        except Exception:  # noqa: BLE001 - a warning only
            return None
    if threads > cores:
        return f"threads: {threads} torch threads on {cores} cores; set threads: {cores} or fewer"
    if load + threads > cores + 0.75:
        return (f"this machine is busy ({load:.1f} of {cores} cores in use) and this stage asks torch for {threads} "
                f"thread(s): threads contend for the cores and a step can take ~10x longer (two 2-thread torch "
                f"processes on 2 cores, measured); run one stage at a time, or set threads: 1")
    return None


def problem_set(config: Config) -> ProblemSet:
    return PROBLEM_SETS.get(config.problems.name)(**config.problems.options())


def gold_verifier_name(config: Config, pset: ProblemSet) -> str:
    """The verifier evaluation grades with: ``evaluate.verifier``, else the one the problem set declares (its
    default, or what its options name: ``problems.jsonl.verifier``). ``selfimprove check`` refuses an
    ``evaluate.verifier`` that cannot read the set's answers (``ProblemSet.compatible_verifiers``)."""
    return config.evaluate.verifier or pset.gold_verifier()


def gold_verifier(config: Config, pset: ProblemSet, name: str | None = None) -> Verifier:
    """The gold grader; a problem whose row names another verifier (a mixed JSONL set) is graded by that one."""
    name = name or gold_verifier_name(config, pset)
    return RoutedVerifier(name, config) if name == pset.gold_verifier() else _make(name, config)


def set_verifier_name(config: Config, pset: ProblemSet) -> str:
    """The set's own gold verifier, whatever ``evaluate.verifier`` says: what GRPO's health grades rollouts with
    (so ``evaluate.verifier``, an evaluation setting, never invalidates ``finetune`` in DVC)."""
    return pset.gold_verifier()


def _make(name: str, config: Config) -> Verifier:
    return VERIFIERS.get(name)(**config.verify.options(name))


class RoutedVerifier(AnswerVerifier):
    """The set's gold verifier for its problems, except a problem that names another (``Problem.verifier``): each
    is graded by the verifier its set or row declares, never by a default that cannot read it."""

    def __init__(self, name: str, config: Config):
        super().__init__()
        self.name = name  # type: ignore[misc]
        self._config = config
        self._by_name: dict[str, Verifier] = {name: _make(name, config)}

    def _for(self, problem: Problem | None) -> Verifier:
        name = (problem.verifier if problem is not None else None) or self.name
        if name not in self._by_name:
            self._by_name[name] = _make(name, self._config)
        return self._by_name[name]

    def verify(self, problems: Any, completions: Sequence[Any]) -> list[Any]:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, c in enumerate(completions):
            p = problems.get(c.problem_id)
            groups[(p.verifier if p is not None else None) or self.name].append(i)
        out: list[Any] = [None] * len(completions)
        for name, idx in groups.items():
            v = self._by_name.get(name) or self._for(problems[completions[idx[0]].problem_id])
            for i, verdict in zip(idx, v.verify(problems, [completions[i] for i in idx]), strict=True):
                out[i] = verdict
        return out

    def extract(self, text: str, problem: Problem | None = None) -> str | None:
        v = self._for(problem)
        return v.extract(text, problem) if isinstance(v, AnswerVerifier) else None

    def equivalent(self, answer: str, reference: str) -> bool:
        v = self._by_name[self.name]
        return v.equivalent(answer, reference) if isinstance(v, AnswerVerifier) else False

    def check(self, problem: Problem, completion: Any) -> Any:
        v = self._for(problem)
        return v.check(problem, completion) if isinstance(v, AnswerVerifier) else v.verify({problem.id: problem}, [completion])[0]

    @property
    def answers(self) -> bool:
        return all(isinstance(v, AnswerVerifier) for v in self._by_name.values())

    def close(self) -> None:
        for v in self._by_name.values():
            v.close()


def round_verifier(config: Config, model_dir: Path | None = None) -> Verifier:
    """The round's verifier; model-based verifiers (``needs_model``, e.g. a judge) get the round's model."""
    name = config.verify.verifier
    cls = VERIFIERS.get(name)
    options = config.verify.options(name)
    if getattr(cls, "needs_model", False):
        options = options | {"model_dir": str(model_dir) if model_dir else None,
                             "make_sampler": lambda sampler, path: make_sampler(config, path, sampler),
                             "batch_size": config.sample.batch_size}
    return cls(**options)


def eval_difficulties(config: Config, key: str | None = None) -> list[int] | None:
    """The difficulties a round is evaluated on: its own ``eval_difficulties`` (the curriculum widens them as it
    goes), else ``evaluate.difficulties``."""
    if key is not None and key != "r0" and key in config.rounds and config.rounds[key].eval_difficulties:
        return config.rounds[key].eval_difficulties
    return config.evaluate.difficulties


def eval_problems(config: Config, pset: ProblemSet, key: str | None = None) -> list[Problem]:
    ev = config.evaluate
    return pset.eval_set(ev.problems_per_difficulty, eval_difficulties(config, key), ev.seed,
                         split=config.problems.eval_split)


def normalize_prompt(text: str) -> str:
    return " ".join(text.split())


def sampling_params(config: Config, *, evaluation: bool = False, seed: int | None = None) -> SamplingParams:
    s, ev = config.sample, config.evaluate
    if evaluation:
        return SamplingParams(
            k=ev.k,
            greedy=True,
            temperature=ev.temperature,
            top_p=ev.top_p,
            top_k=s.top_k,
            max_new_tokens=ev.max_new_tokens or s.max_new_tokens,
            seed=ev.seed if seed is None else seed,
            logprobs=False,
            batch_size=ev.batch_size or s.batch_size,
            stop=tuple(s.stop),
        )
    return SamplingParams(
        k=s.k,
        greedy=s.greedy,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        max_new_tokens=s.max_new_tokens,
        seed=s.seed if seed is None else seed,
        logprobs=s.logprobs,
        batch_size=s.batch_size,
        stop=tuple(s.stop),
    )


def make_sampler(config: Config, model_dir: str | Path, name: str | None = None) -> Sampler:
    """The one sampler factory: ``sample.sampler`` (or ``name``, e.g. a judge's) built from its own options."""
    name = name or config.sample.sampler
    options = (config.sample.model_dump().get(name, {}) or {}) | {"chat": config.model.chat}
    if name == "transformers":
        options = options | {"dtype": config.model.dtype, "trust_remote_code": config.model.trust_remote_code}
    return SAMPLERS.get(name)(model_dir, **options)


def strip_gold(problems: dict[str, Problem]) -> dict[str, Problem]:
    """What a label-free verifier may see: no answer, solution or tests."""
    return {k: p.model_copy(update={"answer": None, "solution": None, "tests": None}) for k, p in problems.items()}
