"""Training objectives side by side on the default task: rejection-sampling SFT vs GRPO (gold) vs GRPO (label-free).

Each variant is one ``selfimprove run`` of the embedded default loop (seed 3, three rounds: 4 digits, then 4-5
digits twice) in its own clone of this repository's HEAD under ``--root``, all started together (``--jobs``), so
they share the machine's load. Every variant bootstraps the same round-0 models (same seed and code: the table's
``r0 model`` column is the md5 DVC recorded for ``runs/r0/model``, equal across variants). What differs:

- ``sft``: today's loop (3 models vote, agreement + view filters, SFT on the accepted labels plus labelled data);
- ``grpo_gold``: ``finetune.trainer=grpo`` with the gold ``exact_match`` reward; the round's verifier is gold too, so
  validate picks prompts whose gold pass rate lies in ``finetune.grpo.prompt_band``;
- ``grpo_labelfree``: GRPO with the label-free ``majority_vote`` reward (TTRL: the group's plurality answer is the
  pseudo-label); prompts picked by the ensemble's vote share; gold only grades (label and reward accuracy);
- ``grpo_labelfree_hot`` (``--hot``): the label-free run at the SFT learning rate (1e-3) and no KL term, to show
  what the health metrics say when it collapses.

GRPO variants use ``finetune.train.lr=1e-4``, ``finetune.grpo.beta=0.04``, 8 generations per prompt, 200 steps of
64 completions per model and round (the SFT rounds' step count and batch size).

Per round: held-out greedy accuracy per length, CPU-seconds of the flow process (``round/cpu_seconds``) and their
running sum, and for GRPO the rollouts' gold reward, label accuracy and reward accuracy (label-free), TRL's last
KL and entropy. Results: ``bench/results/objectives.json`` and ``.md``.

    .venv/bin/python bench/objectives.py --jobs 2 --hot
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import clone, env, fmt, read_back, save_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

GRPO = [
    "finetune.trainer=grpo",
    "finetune.train.lr=0.0001",
    "finetune.grpo.beta=0.04",
    # no agreement/view filters: GRPO wants the problems the models disagree on (prompt_band), not unanimous ones
    "validate.filters=[{function: decontaminate}, {function: dedup}, {function: per_problem_cap, max: 1}]",
]
VARIANTS: dict[str, list[str]] = {
    "sft": [],
    "grpo_gold": GRPO + ["verify.verifier=exact_match", "finetune.grpo.rewards=[{verifier: exact_match}]"],
    "grpo_labelfree": GRPO + ["finetune.grpo.rewards=[{verifier: majority_vote}]"],
}
HOT = {"grpo_labelfree_hot": [o for o in GRPO if not o.startswith(("finetune.train.lr", "finetune.grpo.beta"))]
       + ["finetune.grpo.rewards=[{verifier: majority_vote}]"]}
EXTRA = ["finetune/gold_reward", "finetune/label_accuracy", "finetune/reward_accuracy", "finetune/last_kl",
         "finetune/last_entropy", "finetune/last_frac_reward_zero_std", "validate/prompts", "validate/accepted"]


def run_variant(root: Path, name: str, overrides: list[str], seed: int) -> dict[str, Any]:
    proj = clone(root, name)
    args = [str(Path(sys.executable).parent / "selfimprove"), "run", "--name", name, "--apply", "never",
            "-S", f"seed={seed}"]
    for o in overrides:
        args += ["-S", o]
    log = (root / f"{name}.log").open("w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, cwd=proj, env=env(proj), stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    log.close()
    out: dict[str, Any] = {"scenario": "objectives", "seed": seed, "name": name, "overrides": overrides,
                           "exit": os.waitstatus_to_exitcode(status), "wall_s": round(time.perf_counter() - t0, 1),
                           "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "log": str(root / f"{name}.log")}
    return extras(proj, read_back(proj, name, out))


def from_mlflow(proj: Path, out: dict[str, Any]) -> dict[str, Any]:
    """A run that failed has no experiment commit: its finished rounds are read back from MLflow instead."""
    text = subprocess.run([str(Path(sys.executable).parent / "selfimprove"), "report", "--name", out["name"],
                           "--json"], cwd=proj, env=env(proj), capture_output=True, text=True).stdout
    cum, rounds = 0.0, []
    for r in (json.loads(text)["rounds"] if text.strip() else []):
        m = r["metrics"]
        if "accuracy" not in m:
            continue
        cum += m.get("round/cpu_seconds", 0.0)
        acc = {int(k[len("accuracy/d"):]): round(v, 3) for k, v in m.items()
               if k.startswith("accuracy/d") and k.count("/") == 1}
        row = {"round": f"r{r['round']}", "sampled": None, "accuracy": acc, "cpu_s": round(m.get("round/cpu_seconds", 0.0), 1),
               "cum_cpu_min": round(cum / 60, 2), "label_precision": m.get("acceptance_precision")}
        rounds.append(row | {k.split("/", 1)[1]: m[k] for k in EXTRA if k in m})
    out["rounds"] = rounds
    out["rounds_from"] = "MLflow (the run failed: no experiment commit)"
    return out


def extras(proj: Path, out: dict[str, Any]) -> dict[str, Any]:
    """GRPO health per round and the round-0 model's hash, from the run's experiment commit."""
    record = proj / ".selfimprove" / "runs" / f"{out['name']}.json"
    rev = json.loads(record.read_text()).get("experiment_rev") if record.exists() else None
    if not rev:
        return from_mlflow(proj, out)
    show = lambda path: subprocess.run(["git", "show", f"{rev}:{path}"], cwd=proj, capture_output=True,  # noqa: E731
                                       text=True).stdout
    import yaml

    lock = yaml.safe_load(show("dvc.lock")) or {}
    for o in (lock.get("stages", {}).get("bootstrap", {}).get("outs") or []):
        if o["path"] == "runs/r0/model":
            out["r0_model_md5"] = o.get("md5")
    for r in out.get("rounds", []):
        text = show(f"runs/metrics/{r['round']}.json")
        m = json.loads(text) if text else {}
        r.update({k.split("/", 1)[1]: m[k] for k in EXTRA if k in m})
    return out


def markdown(results: list[dict[str, Any]], command: str) -> str:
    lines = ["# Objectives: rejection-sampling SFT vs GRPO (gold) vs GRPO (label-free)", "",
             f"Command: `{command}` (this repository's HEAD, cloned per run; 2-core machine, threads=1 per run, the "
             "runs side by side).", ""]
    for r in results:
        lines += [f"## {r['name']}", "", "Overrides: " + ("; ".join(f"`{o}`" for o in r["overrides"]) or "none"), "",
                  f"exit {r['exit']}; wall {r['wall_s'] / 60:.1f} min; CPU of the process tree {r['cpu_s'] / 60:.1f} "
                  f"min; r0 model md5 {r.get('r0_model_md5')}. Stopped: "
                  + (r.get("stopped") or ("no (ran every round)" if r["exit"] == 0 else "the run failed")), ""]
        if r.get("error"):
            lines += ["The run stopped with: " + r["error"].replace("\n", " "), ""]
        if not r.get("rounds"):
            continue
        if r.get("rounds_from"):
            lines += [f"Rounds read back from {r['rounds_from']}.", ""]
        lines += ["| round | sampled | d3 | d4 | d5 | d6 | round CPU s | cum. CPU min | train rows/prompts | "
                  "SFT label precision | GRPO gold reward | label acc. | reward acc. | KL | entropy |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for x in r["rounds"]:
            a = x["accuracy"]
            rows = x.get("prompts", x.get("accepted"))
            lines.append(f"| {x['round']} | {x['sampled']} | {fmt(a.get(3))} | {fmt(a.get(4))} | {fmt(a.get(5))} | "
                         f"{fmt(a.get(6))} | {x['cpu_s']} | {x['cum_cpu_min']} | {fmt(rows, 0)} | "
                         f"{fmt(x['label_precision'])} | {fmt(x.get('gold_reward'))} | {fmt(x.get('label_accuracy'))} | "
                         f"{fmt(x.get('reward_accuracy'))} | {fmt(x.get('last_kl'), 3)} | {fmt(x.get('last_entropy'), 3)} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2, help="runs side by side (one thread each)")
    ap.add_argument("--hot", action="store_true", help="also the label-free run at lr 1e-3 without KL")
    ap.add_argument("--only", nargs="+", help="run only these variants")
    ap.add_argument("--root", type=Path, default=Path("/tmp/selfimprove-objectives"))
    ap.add_argument("--reparse", action="store_true", help="rebuild the results files from the runs under --root")
    a = ap.parse_args()
    variants = VARIANTS | (HOT if a.hot else {})
    if a.only:
        variants = {k: v for k, v in variants.items() if k in a.only}
    if a.reparse:
        old = json.loads((RESULTS / "objectives.json").read_text())
        command = old["command"]
        results = [extras(a.root / r["name"], read_back(a.root / r["name"], r["name"],
                                                        {k: v for k, v in r.items() if k != "rounds"}))
                   for r in old["results"]]
    else:
        command = "python bench/objectives.py " + " ".join(sys.argv[1:])
        a.root.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(a.jobs) as pool:
            results = list(pool.map(lambda kv: run_variant(a.root, kv[0], kv[1], a.seed), variants.items()))
    save_results("objectives", {"command": command, "results": results}, markdown(results, command))


if __name__ == "__main__":
    main()
