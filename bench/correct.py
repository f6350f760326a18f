"""Second attempts on the embedded default task, through ``selfimprove run``: what trains self-correction, if anything.

Each variant is one run of the default loop (params.yaml: three rounds, 4 digits then 4-5 digits twice; three tiny
models, label-free unanimous vote) with ``correct.enabled`` in its own clone of HEAD, one after another (never two
torch processes at once on this 2-core machine). Every variant samples the same first and second attempts (the
greedy answer of each model, then one greedy second attempt after ``=`` (intrinsic) or ``==`` (extrinsic: the vote
said the first was wrong)), so sampling costs the same; they differ in what is trained on:

- ``rs_<mode>``: plain rejection sampling, today's loop: the first attempts the filters keep; traces only measured;
- ``sft_<mode>``: the same rows plus SFT rows from the traces, (x, y1, feedback) -> y2 where r2 passes (every
  wrong->right, right->right up to ``keep_ratio`` 1 per wrong->right one), the same number of steps;
- ``grpo_<mode>``: GRPO from each round's start model on the round's prompts with the two-attempt rollout (first
  attempt, feedback, second attempt; the feedback tokens out of the loss) and reward r2 + alpha * (r2 - r1), the
  vote of each group's first attempts as the label (``finetune.grpo.rewards: majority_vote``), the same number of
  steps (lr 1e-4, KL 0.04: bench/objectives.py's GRPO recipe), on the problems the three models disagree on;
- ``grpo_intrinsic_alpha0``: ``grpo_intrinsic`` rewarded r2 alone (no bonus on improving);
- ``rs_intrinsic_noprior``: ``rs_intrinsic`` with ``correct.bootstrap=0``: round 0 never saw a second attempt.

Every variant but the last has ``correct.bootstrap`` 0.25: round 0 also learns the second-attempt format on a quarter
of its labelled 1-3 digit problems (the gold answer after a first attempt with one digit changed, or a right one).

Per round: held-out greedy accuracy per length, held-out acc@1 -> acc@2 with the flip shares (gold feedback in the
extrinsic mode), the same on the round's traces (label-free), rows trained on; minutes per run.

    .venv/bin/python bench/correct.py --seeds 3 --variants rs_intrinsic sft_intrinsic rs_extrinsic sft_extrinsic
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fmt, head_commit, run_variant, save_results  # noqa: E402

from selfimprove.correction import FLIP_KEYS  # noqa: E402

GRPO = ["finetune.trainer=grpo", "finetune.train.lr=0.0001", "finetune.grpo.beta=0.04",  # bench/objectives.py's recipe
        # no agreement/view filters: GRPO wants the problems the models disagree on (prompt_band), not unanimous ones
        "validate.filters=[{function: decontaminate}, {function: dedup}, {function: per_problem_cap, max: 1}]"]
VARIANTS: dict[str, list[str]] = {}
for mode in ("intrinsic", "extrinsic"):
    on = ["correct.enabled=true", f"correct.mode={mode}"]
    VARIANTS[f"rs_{mode}"] = on + ["correct.train=none"]
    VARIANTS[f"sft_{mode}"] = on + ["correct.train=traces"]
    VARIANTS[f"grpo_{mode}"] = on + ["correct.train=traces", *GRPO]
# the bonus alone: wrong->right earns 2 and right->right 1 at alpha 1, so a worse first attempt can pay
VARIANTS["grpo_intrinsic_alpha0"] = VARIANTS["grpo_intrinsic"] + ["correct.alpha=0"]
VARIANTS["rs_intrinsic_noprior"] = VARIANTS["rs_intrinsic"] + ["correct.bootstrap=0"]  # round 0 never saw the format
KEYS = ("validate/accepted", "validate/train_rows", "validate/trace_rows", "acceptance_precision",
        *(f"{p}/{k}" for p in ("correct", "correct_eval") for k in FLIP_KEYS))


def run_one(root: Path, variant: str, seed: int) -> dict[str, Any]:
    def minutes(m: dict[str, Any]) -> dict[str, Any]:
        return {"minutes": {k.split("/")[0]: round(v / 60, 2) for k, v in m.items()
                            if k.endswith("/seconds") and k.count("/") == 1}}

    return run_variant(root, variant, seed, VARIANTS[variant], KEYS, minutes)


def markdown(results: list[dict[str, Any]], command: str) -> str:
    lines = ["# Second attempts: rejection sampling vs SFT on traces vs GRPO (default tiny task)", "",
             f"Command: `{command}` (commit {head_commit()}; 2-core machine, one run at a time).", "",
             "acc@1 -> acc@2 held out: greedy first attempt, greedy second attempt (gold verdict as the extrinsic "
             "feedback). On traces: the round's own first attempts, graded against the vote's label.", "",
             "| variant | seed | round | d4 | d5 | d6 | held-out acc@1 -> acc@2 | w->r / r->w | traces acc@1 -> acc@2 "
             "| w->r / r->w | edit | rows (trace rows) | label prec. | wall min |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for x in r["rounds"]:
            a = x["accuracy"]

            def pair(p: str, x: dict = x) -> tuple[str, str]:
                if f"{p}/acc1" not in x:
                    return "", ""
                return (f"{fmt(x[f'{p}/acc1'])} -> {fmt(x[f'{p}/acc2'])}",
                        f"{fmt(x[f'{p}/wrong_to_right'])} / {fmt(x[f'{p}/right_to_wrong'])}")

            ev, ev_flip = pair("correct_eval")
            tr, tr_flip = pair("correct")
            rows = f"{fmt(x.get('validate/train_rows'), 0)} ({fmt(x.get('validate/trace_rows'), 0)})" \
                if "validate/train_rows" in x else ""
            lines.append(f"| {r['variant']} | {r['seed']} | {x['round']} | {fmt(a.get('d4'))} | {fmt(a.get('d5'))} | "
                         f"{fmt(a.get('d6'))} | {ev} | {ev_flip} | {tr} | {tr_flip} | {fmt(x.get('correct/edit'))} | "
                         f"{rows} | {fmt(x.get('acceptance_precision'))} | {r['wall_min']} |")
        if r["exit"]:
            lines.append(f"| {r['variant']} | {r['seed']} | failed | {r.get('log_tail', '')[-300:]!r} ||||||||||||")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[3, 4, 5])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--root", type=Path, default=Path("/tmp/selfimprove-correct"))
    ap.add_argument("--tag", default="")
    a = ap.parse_args()
    results = [run_one(a.root, v, s) for s in a.seeds for v in a.variants]
    command = "python bench/correct.py " + " ".join(sys.argv[1:])
    save_results(f"correct{'_' + a.tag if a.tag else ''}", {"commit": head_commit(), "runs": results},
                 markdown(results, command))


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
