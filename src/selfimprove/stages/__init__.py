"""One function per stage: ``run_<stage>(config, paths, tracker) -> StageReport``.

The same function serves the DVC stage command (``selfimprove <stage> --round rN``) and the Prefect task of
the same name. Each reads only its inputs and writes only its outputs, atomically, with a manifest last.
"""

from selfimprove.stages.bootstrap import run_bootstrap
from selfimprove.stages.common import StageReport
from selfimprove.stages.evaluate import run_evaluate
from selfimprove.stages.finetune import run_finetune
from selfimprove.stages.sample import run_sample
from selfimprove.stages.summary import run_summary
from selfimprove.stages.validate import run_validate
from selfimprove.stages.verify import run_verify

ROUND_STAGES = {
    "sample": run_sample,
    "verify": run_verify,
    "validate": run_validate,
    "finetune": run_finetune,
    "evaluate": run_evaluate,
}
STAGES = {"bootstrap": run_bootstrap, **ROUND_STAGES, "summary": run_summary}

__all__ = [
    "ROUND_STAGES",
    "STAGES",
    "StageReport",
    "run_bootstrap",
    "run_evaluate",
    "run_finetune",
    "run_sample",
    "run_summary",
    "run_validate",
    "run_verify",
]
