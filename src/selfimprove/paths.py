"""Where every stage reads and writes: one place, so DVC's ``dvc.yaml``, the CLI and the Prefect flow agree.

Layout under the workspace (``runs/`` by default); every directory is one DVC output with its own
``manifest.json``:

    runs/r0/sample/     the labelled problems the bootstrap trained on (problems.jsonl; samples.jsonl is empty)
    runs/r0/validate/   labelled data the bootstrap trained on (train.jsonl) + empty accepted.jsonl
    runs/r0/model/      round-0 model (trained from scratch, or a pointer to a local/hub model)
    runs/rN/propose/    proposals.jsonl (every problem the model wrote, accepted or not, with its checks) +
                        problems.jsonl (the accepted ones, which sample mixes into the round; empty when propose is off)
    runs/rN/sample/     problems.jsonl (with hidden gold) + samples.jsonl (completions only)
    runs/rN/verify/     verdicts.jsonl
    runs/rN/correct/    traces.jsonl: each first attempt's second attempt after feedback (empty when correct is off)
    runs/rN/validate/   train.jsonl (what finetune trains on: TrainRows; PreferencePairs for DPO; PromptRows for GRPO),
                        accepted.jsonl (accumulated self-labels), quality.json (Great Expectations results)
    runs/rN/model/      the round's fine-tuned model (HF format; an ensemble holds m0, m1, ...)
    runs/rN/finetune/   rollouts.jsonl: every completion GRPO generated, with its rewards (trainer: grpo;
                        other trainers leave only the manifest)
    runs/rN/evaluate/   predictions.jsonl
    runs/metrics/rN.json  per-round metrics written by evaluate@rN (DVC metrics file, not cached; no timings)
    runs/summary/       accuracy.csv + accuracy.png across rounds (DVC plots) and metrics.json (the headline
                        numbers), written by the ``summary`` stage from runs/metrics/

Nothing in these folders holds a timestamp or a timing: the same inputs give byte-identical outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from selfimprove.config import Config, round_index


@dataclass(frozen=True)
class RoundPaths:
    project: Path
    workspace: Path
    key: str
    prev: str | None

    @classmethod
    def for_round(cls, config: Config, key: str, project: str | Path = ".") -> RoundPaths:
        project = Path(project)
        ws = project / config.workspace
        if key == "r0":
            return cls(project, ws, "r0", None)
        return cls(project, ws, key, config.round_config(key).prev)

    @property
    def round(self) -> int:
        return round_index(self.key)

    @property
    def dir(self) -> Path:
        return self.workspace / self.key

    # outputs of this round
    @property
    def propose(self) -> Path:
        """The problems the model wrote this round (proposals.jsonl, problems.jsonl: the accepted ones)."""
        return self.dir / "propose"

    @property
    def sample(self) -> Path:
        return self.dir / "sample"

    @property
    def verify(self) -> Path:
        return self.dir / "verify"

    @property
    def correct(self) -> Path:
        """Second attempts after feedback: traces.jsonl (x, y1, r1, feedback, y2, r2; empty when correct is off)."""
        return self.dir / "correct"

    @property
    def validate(self) -> Path:
        return self.dir / "validate"

    @property
    def model(self) -> Path:
        return self.dir / "model"

    @property
    def finetune(self) -> Path:
        """What finetune records besides the model: GRPO's rollouts (rollouts.jsonl) and its manifest."""
        return self.dir / "finetune"

    @property
    def evaluate(self) -> Path:
        return self.dir / "evaluate"

    @property
    def metrics(self) -> Path:
        return metrics_dir_of(self.workspace) / f"{self.key}.json"

    # inputs from other rounds
    @property
    def prev_paths(self) -> RoundPaths:
        if self.prev is None:
            raise ValueError("round 0 has no previous round")
        return RoundPaths(self.project, self.workspace, self.prev, None)

    @property
    def base(self) -> RoundPaths:
        return RoundPaths(self.project, self.workspace, "r0", None)


def metrics_dir_of(workspace: Path) -> Path:
    return workspace / "metrics"


def metrics_dir(config: Config, project: str | Path = ".") -> Path:
    return metrics_dir_of(Path(project) / config.workspace)


def summary_dir(config: Config, project: str | Path = ".") -> Path:
    return Path(project) / config.workspace / "summary"
