"""Model-written problems vs the generator's, on the embedded default task, through ``selfimprove run``.

Each variant is one run of the default loop (params.yaml: three rounds, 4 digits then 4-5 digits twice; three tiny
models) in its own clone of HEAD, one after another (never two torch processes at once on this 2-core machine).
Every round samples the same number of problems (``sample.problems_per_round``) and fine-tunes the same steps:

- ``generator``: today's default loop: the problem set's problems, labelled by the three models' unanimous vote;
- ``generator_computed``: the problem set's problems, graded against their computed sums (``exact_match``), kept in
  the pass-rate band [0.2, 0.8] of the three models' answers, then the correct answers: the proposals' labels and
  selection on the generator's problems, so that the two below differ only in who wrote the problems;
- ``proposals``: after round 0 the problems come only from the model (``propose.enabled``, ``propose.mix: 1.0``,
  ``propose.per_round`` = the round's problem count): member m0 writes the second operand of a problem whose first
  operand comes from an example (a seed, or an earlier accepted proposal); the sum is computed; validity, novelty and
  the band [0.2, 0.8] decide what is trained on;
- ``proposals_exact``: ``proposals`` with ``propose.novelty.threshold=0.9`` (near-exact duplicates only);
- ``proposals_diverse``: the same at ``propose.temperature=1.5`` with one example per prompt (``propose.shots=1``:
  always a seed problem, never an earlier proposal).

Per round: held-out greedy accuracy per length, rows trained on, and for ``proposals`` the acceptance, rejections by
reason, band yield, mean complexity (the drift signal) and self-similarity; minutes per run.

    .venv/bin/python bench/propose.py --seeds 3 4 5
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fmt, head_commit, run_variant, save_results  # noqa: E402

BAND = "[0.2, 0.8]"
VARIANTS: dict[str, list[str]] = {
    "generator": [],
    "generator_computed": ["verify.verifier=exact_match",
                           "validate.filters=[{function: pass_rate_band, min: 0.2, max: 0.8}, {function: keep_correct}, "
                           "{function: format}, {function: decontaminate}, {function: dedup}, "
                           "{function: per_problem_cap, max: 1}]"],
    "proposals": ["propose.enabled=true", "propose.mix=1.0", "propose.per_round=4000", f"propose.band={BAND}"],
    # the same, with a hotter proposer that always writes variants of the problem set's seeds (one example each, so
    # never an earlier proposal): does diversity, not the earlier rounds' pool, keep the band filled?
    "proposals_diverse": ["propose.enabled=true", "propose.mix=1.0", "propose.per_round=4000", f"propose.band={BAND}",
                          "propose.temperature=1.5", "propose.shots=1"],
    # the default recipe's proposals with novelty at near-exact matches only: on 10-character problems a character
    # 3-gram Jaccard of 0.7 already joins problems one digit apart at an end ("1234+5678=" vs "9234+5678=": 0.78)
    "proposals_exact": ["propose.enabled=true", "propose.mix=1.0", "propose.per_round=4000", f"propose.band={BAND}",
                        "propose.novelty.threshold=0.9"],
}
KEYS = ("validate/accepted", "validate/train_rows", "propose/accepted", "propose/proposed", "propose/acceptance_rate",
        "proposals/band_yield", "proposals/too_easy", "proposals/too_hard", "propose/mean_complexity",
        "propose/self_similarity", "propose/distinct_2", "acceptance_precision")


def run_one(root: Path, variant: str, seed: int) -> dict[str, Any]:
    def rejected(m: dict[str, Any]) -> dict[str, Any]:
        return {"rejected": {k.rsplit("/", 1)[1]: int(v) for k, v in m.items() if k.startswith("propose/rejected/")}}

    return run_variant(root, variant, seed, VARIANTS[variant], KEYS, rejected)


def markdown(results: list[dict[str, Any]], command: str) -> str:
    lines = ["# Model-written problems vs the generator's (default tiny task)", "",
             f"Command: `{command}` (commit {head_commit()}; 2-core machine, one run at a time).", "",
             "| variant | seed | round | d4 | d5 | d6 | mean | rows trained | proposals accepted / asked | band yield "
             "| too easy / too hard | mean complexity | self-sim. | rejected | wall min |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for x in r["rounds"]:
            a = x["accuracy"]
            prop = (f"{fmt(x.get('propose/accepted'), 0)} / {fmt(x.get('propose/proposed'), 0)}"
                    if "propose/proposed" in x else "")
            band = (f"{fmt(x.get('proposals/too_easy'), 0)} / {fmt(x.get('proposals/too_hard'), 0)}"
                    if "proposals/too_easy" in x else "")
            rej = ", ".join(f"{k} {v}" for k, v in x["rejected"].items())
            lines.append(f"| {r['variant']} | {r['seed']} | {x['round']} | {fmt(a.get('d4'))} | {fmt(a.get('d5'))} | "
                         f"{fmt(a.get('d6'))} | {fmt(x.get('mean'))} | {fmt(x.get('validate/accepted'), 0)} | {prop} | "
                         f"{fmt(x.get('proposals/band_yield'))} | {band} | {fmt(x.get('propose/mean_complexity'))} | "
                         f"{fmt(x.get('propose/self_similarity'))} | {rej} | {r['wall_min']} |")
        if r["exit"]:
            lines.append(f"| {r['variant']} | {r['seed']} | failed | {r.get('log_tail', '')[-300:]!r} ||||||||||||")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[3, 4, 5])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--root", type=Path, default=Path("/tmp/selfimprove-propose"))
    ap.add_argument("--tag", default="")
    a = ap.parse_args()
    results = [run_one(a.root, v, s) for s in a.seeds for v in a.variants]
    command = "python bench/propose.py " + " ".join(sys.argv[1:])
    save_results(f"propose{'_' + a.tag if a.tag else ''}", {"commit": head_commit(), "runs": results},
                 markdown(results, command))


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
