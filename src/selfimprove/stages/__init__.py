"""One function per stage: ``run_<stage>(config, paths, tracker) -> StageReport``.

The same function serves the DVC stage command (``selfimprove <stage> --round rN``) and the Prefect task of
the same name. Stages that loop over ensemble members or shards of problems are also written as units and a
merge (``SPLITS``, ``selfimprove.stages.parts``): the flow runs the units side by side on Ray. Each reads only its inputs and writes only its outputs, atomically, with a manifest last.
"""

from selfimprove.stages.bootstrap import BOOTSTRAP, run_bootstrap
from selfimprove.stages.common import StageReport
from selfimprove.stages.correct import run_correct
from selfimprove.stages.evaluate import EVALUATE, run_evaluate
from selfimprove.stages.finetune import FINETUNE, run_finetune
from selfimprove.stages.parts import Split, Unit
from selfimprove.stages.propose import run_propose
from selfimprove.stages.sample import SAMPLE, run_sample
from selfimprove.stages.summary import run_summary
from selfimprove.stages.validate import run_validate
from selfimprove.stages.verify import VERIFY, run_verify

ROUND_STAGES = {
    "propose": run_propose,
    "sample": run_sample,
    "verify": run_verify,
    "correct": run_correct,
    "validate": run_validate,
    "finetune": run_finetune,
    "evaluate": run_evaluate,
}
STAGES = {"bootstrap": run_bootstrap, **ROUND_STAGES, "summary": run_summary}
# the stages whose work splits into units (members, shards): selfimprove.stages.parts
SPLITS: dict[str, Split] = {s.stage: s for s in (BOOTSTRAP, SAMPLE, VERIFY, FINETUNE, EVALUATE)}

__all__ = [
    "ROUND_STAGES",
    "SPLITS",
    "STAGES",
    "Split",
    "StageReport",
    "Unit",
    "run_bootstrap",
    "run_correct",
    "run_evaluate",
    "run_finetune",
    "run_propose",
    "run_sample",
    "run_summary",
    "run_validate",
    "run_verify",
]
