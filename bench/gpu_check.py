"""GPU check of selfimprove's own code paths (run on a CUDA machine; CI never runs it).

What it exercises, all with models built from configs (no hub): the ``transformers`` sampler on CUDA (bf16),
``train_sft`` through TRL with the bf16/``use_cpu=False`` settings it picks on a GPU, LoRA, ``train_dpo``, and
the tiny coupled model learning 1-3 digit addition on the GPU. Results go to ``$OUT/gpu_check.json`` (or
``bench/results/gpu_check.json``).

    python bench/gpu_check.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def main() -> None:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from selfimprove.config import DPOConfig, LoraConfig, TrainConfig
    from selfimprove.models import build_char_tokenizer, build_tiny_model
    from selfimprove.problems.arithmetic import ArithmeticProblems
    from selfimprove.samplers import SamplingParams
    from selfimprove.samplers.hf import TransformersSampler
    from selfimprove.metrics import evaluate_with
    from selfimprove.trainers.dpo import train_dpo
    from selfimprove.trainers.sft import train_sft
    from selfimprove.types import PreferencePair, TrainRow
    from selfimprove.verifiers import make_verifier

    out: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    import transformers
    import trl

    out["transformers"], out["trl"] = transformers.__version__, trl.__version__
    work = Path(tempfile.mkdtemp())

    # 1. the embedded default on the GPU: tiny coupled model, bf16 SFT via TRL, sampled on CUDA
    ps = ArithmeticProblems()
    rows = [TrainRow(id=p.id, prompt=p.prompt, completion=p.answer, problem_id=p.id, origin="real", round=0)
            for p in ps.labelled(20000, [1, 2, 3], seed=0)]
    tok = build_char_tokenizer("0123456789+=")
    model = build_tiny_model(tok, seed=0)
    t = time.perf_counter()
    rep = train_sft("x", rows, work / "tiny", TrainConfig(steps=800, lr=2e-3, warmup_steps=100, batch_size=64, max_length=32),
                    model=model, tokenizer=tok, progress=False)
    tiny_train_s = time.perf_counter() - t
    with TransformersSampler(work / "tiny") as s:
        assert s.device.type == "cuda"
        t = time.perf_counter()
        metrics, _ = evaluate_with(s, ps.eval_set(300, [1, 2, 3, 4, 5], 0), make_verifier("exact_match"),
                                   SamplingParams(k=4, greedy=True, max_new_tokens=8, batch_size=1024), round=0, progress=False)
        eval_s = time.perf_counter() - t
    out["tiny"] = {"train": rep, "train_wall_s": round(tiny_train_s, 1), "eval_wall_s": round(eval_s, 2),
                   "dtype": str(next(model.parameters()).dtype),
                   "metrics": {k: round(v, 3) for k, v in metrics.items() if k.startswith(("accuracy", "pass_at", "maj_at"))}}
    print(json.dumps(out["tiny"]), flush=True)

    # 2. a Qwen2.5-0.5B-shaped model (random weights): sampler throughput, SFT with LoRA, DPO
    tok = AutoTokenizer.from_pretrained(work / "tiny")  # any tokenizer works for throughput; vocab resized below
    cfg = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                      num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    big = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    big.save_pretrained(work / "q05")
    tok.save_pretrained(work / "q05")
    prompts = [p.model_copy(update={"meta": {}}) for p in ps.eval_set(64, [3, 4, 5, 6], 1)]
    with TransformersSampler(work / "q05", dtype="bfloat16") as s:
        params = SamplingParams(k=4, greedy=False, temperature=1.0, max_new_tokens=128, batch_size=1024, logprobs=True)
        s.sample(prompts[:8], params, round=0, progress=False)  # warm-up
        torch.cuda.synchronize()
        t = time.perf_counter()
        comps = s.sample(prompts, params, round=0, progress=False)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
    toks = sum(c.n_tokens for c in comps)
    out["qwen05_sampler"] = {"completions": len(comps), "tokens": toks, "seconds": round(dt, 2), "tokens_per_s": round(toks / dt)}
    print(json.dumps(out["qwen05_sampler"]), flush=True)

    long_rows = [TrainRow(id=str(i), prompt=("1+2=" * 60), completion=("9" * 250), problem_id=str(i), origin="self", round=1)
                 for i in range(512)]
    for name, lora in [("full", LoraConfig()), ("lora", LoraConfig(enabled=True, r=16, alpha=32))]:
        torch.cuda.reset_peak_memory_stats()
        tc = TrainConfig(steps=20, lr=1e-5, warmup_steps=2, batch_size=16, max_length=1024, lora=lora, logging_steps=10)
        r = train_sft(work / "q05", long_rows, work / f"q05-{name}", tc, progress=False)
        out[f"qwen05_sft_{name}"] = r | {"tokens_per_s": round(20 * 16 * 491 / r["seconds"]),
                                        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)}
        print(name, json.dumps(out[f"qwen05_sft_{name}"]), flush=True)
    pairs = [PreferencePair(id=str(i), prompt="1+2=" * 30, chosen="3" * 60, rejected="4" * 60, problem_id=str(i), round=1)
             for i in range(128)]
    torch.cuda.reset_peak_memory_stats()
    r = train_dpo(work / "q05", pairs, work / "q05-dpo", TrainConfig(steps=10, lr=1e-6, warmup_steps=0, batch_size=8, max_length=256),
                  dpo=DPOConfig(), progress=False)
    out["qwen05_dpo"] = r | {"peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)}
    print(json.dumps(out["qwen05_dpo"], default=str), flush=True)

    dest = Path(os.environ.get("OUT") or ROOT / "bench" / "results") / "gpu_check.json"
    dest.write_text(json.dumps(out, indent=2, default=str))
    print("wrote", dest)


if __name__ == "__main__":
    main()
