"""``openai`` sampler: k completions per problem from any OpenAI-compatible *completions* server.

With a chat template in use (``model.chat``: ``always``, or ``auto`` when the local model folder's tokenizer has
one) it posts each problem's messages to ``POST /v1/chat/completions`` instead: the server applies the template.

What: vLLM (``vllm serve``), SGLang, TGI and llama.cpp all expose ``POST /v1/completions``. This sampler sends
each problem's prompt there and returns the same ``Completion`` records as the ``transformers`` sampler:
ids ``<problem_id>#<idx>``, idx 0 the greedy completion when ``greedy`` is on (temperature 0, ``n=1``), then
``k`` sampled ones (one request with ``n=k``), ``finish_reason`` stop/length, and the chosen tokens'
log-probabilities when the server returns them (vLLM reports the model's raw distribution, like our
transformers sampler). Per-problem ``meta.max_new_tokens`` caps ``max_tokens`` and reaching it counts as a
natural stop; stop strings are passed to the server, which cuts the text before them.

Why over HTTP with ``httpx`` rather than the ``openai`` package: one dependency less, and the retry policy is
ours: exponential backoff with full jitter on 429, 5xx and connection errors (``Retry-After`` honoured),
never on other 4xx (a bad request does not get better by repeating it). Sampling is deterministic given
the seed: each problem's request carries a seed derived from ``(params.seed, problem id)``, so the order in
which concurrent requests finish does not matter.

How: base URL and model come from ``sample.openai`` or the environment (``OPENAI_BASE_URL``,
``OPENAI_MODEL``; the key from the variable named by ``api_key_env``). A URL without a path gets ``/v1``.
When no model is named and the server serves exactly one, that one is used. Before any work a probe of
``GET /models`` fails in seconds with the URL and what to start if the server is unreachable. Requests run
on ``concurrency`` threads sharing one connection pool::

    with OpenAISampler(model_dir, base_url="http://127.0.0.1:8000") as s:
        completions = s.sample(problems, SamplingParams(k=4), round=1)
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from selfimprove.samplers.base import Sampler, SamplingParams, completion_id
from selfimprove.types import Completion, Problem

from pydantic import Field

from selfimprove.options import NonNegInt, PosInt, Strict


class OpenAISamplerConfig(Strict):
    """``sample.openai``: the server, the model it serves, and how hard to push it."""

    base_url: str | None = Field(None, description="OpenAI-compatible base URL (or env OPENAI_BASE_URL).")
    model: str | None = Field(None, description="Served model name (or env OPENAI_MODEL).")
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: PosInt = 8
    max_retries: NonNegInt = 5
    timeout_s: float = Field(120.0, gt=0)

log = logging.getLogger(__name__)

#: Status codes worth retrying: rate limiting and server-side failures.
RETRY_STATUS = frozenset({408, 409, 425, 429}) | frozenset(range(500, 600))


class SamplerServerError(RuntimeError):
    """The server could not be reached, rejected a request, or kept failing after the retries."""


def _local_template(model_dir: str | Path) -> bool:
    """Whether the model behind ``model_dir`` (a round's folder or the local model it points to) has a chat template."""
    from selfimprove.chat import model_has_template

    try:
        from selfimprove.checkpoint import resolve

        path = Path(resolve(model_dir))
    except Exception:  # noqa: BLE001 - a hub id or a bare served name: no local files to read
        path = Path(model_dir)
    return model_has_template(path)


def normalize_base_url(url: str) -> str:
    """``http://host:8000`` -> ``http://host:8000/v1``; a URL with a path is kept (minus a trailing slash).

    >>> normalize_base_url("http://127.0.0.1:8000"), normalize_base_url("http://h/v1/")
    ('http://127.0.0.1:8000/v1', 'http://h/v1')
    """
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url if urlsplit(url).path not in ("", "/") else url + "/v1"


def request_seed(seed: int, problem_id: str, attempt: int = 0) -> int:
    """A per-problem seed: independent of batch order and concurrency, stable across runs.

    >>> request_seed(0, "a") == request_seed(0, "a") != request_seed(1, "a")
    True
    """
    return zlib.crc32(f"{seed}/{problem_id}/{attempt}".encode()) & 0x7FFFFFFF


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random, retry_after: float | None = None) -> float:
    """Full-jitter exponential backoff (uniform in [0, min(max, base * 2**attempt)]), at least ``Retry-After``.

    Full jitter spreads the retries of many concurrent clients hit by the same overload, instead of having
    them all come back at the same instant.
    """
    delay = rng.uniform(0.0, min(max_s, base_s * (2**attempt)))
    if retry_after is not None:
        delay = max(delay, min(retry_after, max_s))
    return delay


def _retry_after(headers: Any) -> float | None:
    value = headers.get("retry-after") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


@dataclass
class _Job:
    index: int
    problem: Problem
    greedy: bool
    n: int
    max_tokens: int
    answer_tokens: int | None


class OpenAISampler(Sampler):
    """Completions from an OpenAI-compatible server; see the module docstring."""

    name: ClassVar[str] = "openai"

    def __init__(
        self,
        model_dir: str | Path,
        base_url: str | None = None,
        model: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        max_retries: int = 5,
        timeout_s: float = 120.0,
        *,
        connect_timeout_s: float = 5.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        record_name: str | None = None,
        start_hint: str | None = None,
        chat: str = "auto",
        **options: Any,
    ):
        super().__init__(model_dir, **options)
        import httpx

        #: model.chat: the chat endpoint (the server applies the model's template and stops at its end of turn).
        #: auto = when the model folder's tokenizer has a template; always = whatever the served model is.
        self.chat = chat == "always" or (chat == "auto" and _local_template(model_dir))
        self._endpoint = "/chat/completions" if self.chat else "/completions"

        url = base_url or os.environ.get("OPENAI_BASE_URL")
        if not url:
            raise SamplerServerError(
                "openai sampler: no server URL. Set sample.openai.base_url in params.yaml or OPENAI_BASE_URL, e.g. "
                "http://127.0.0.1:8000/v1 after 'vllm serve <model> --port 8000' (or use sampler: vllm, which starts one)"
            )
        self.base_url = normalize_base_url(url)
        self.concurrency = max(1, int(concurrency))
        self.max_retries = int(max_retries)
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.record_name = record_name or self.name
        self.start_hint = start_hint or (
            f"start an OpenAI-compatible server there, e.g. 'vllm serve {model_dir} --port "
            f"{urlsplit(self.base_url).port or 8000}', or fix sample.openai.base_url / OPENAI_BASE_URL"
        )
        self._rng = random.Random()  # jitter only; never affects what is sampled
        self._rng_lock = threading.Lock()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(api_key_env) if api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(connect_timeout_s, timeout_s)),
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
        )
        self.model = model or os.environ.get("OPENAI_MODEL") or self._served_model()

    # ------------------------------------------------------------------------------------------- HTTP

    def _served_model(self) -> str:
        """The single model the server serves (``GET /models``); fails fast and clearly otherwise."""
        data = self._probe()
        ids = [m.get("id") for m in (data or {}).get("data", []) if isinstance(m, dict) and m.get("id")]
        if len(ids) == 1:
            return str(ids[0])
        if not ids:
            raise SamplerServerError(f"{self.base_url}/models lists no model; set sample.openai.model or OPENAI_MODEL")
        raise SamplerServerError(
            f"{self.base_url} serves {len(ids)} models ({', '.join(map(str, ids))}); choose one with sample.openai.model "
            "or OPENAI_MODEL"
        )

    def _probe(self) -> dict[str, Any] | None:
        """One quick ``GET /models``: an unreachable server fails here in seconds, naming the URL."""
        import httpx

        try:
            resp = self._client.get("/models")
        except httpx.TransportError as e:
            raise SamplerServerError(f"cannot reach an OpenAI-compatible server at {self.base_url} ({type(e).__name__}: "
                                     f"{e}); {self.start_hint}") from None
        if resp.status_code == 404:
            return None  # some servers have no /models; the first completion will tell
        if resp.status_code >= 400:
            raise SamplerServerError(f"{self.base_url}/models answered HTTP {resp.status_code}: {resp.text[:300]}")
        return resp.json()

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        """POST /completions with retries on 429/5xx/connection errors; other 4xx raise at once."""
        import httpx

        last = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                resp = self._client.post(self._endpoint, json=payload)
            except httpx.TransportError as e:
                last = f"{type(e).__name__}: {e}"
            else:
                if resp.status_code < 400:
                    return resp.json()
                body = resp.text[:500]
                if resp.status_code not in RETRY_STATUS:
                    raise SamplerServerError(
                        f"{self.base_url}{self._endpoint} rejected the request with HTTP {resp.status_code} (not retried): {body}"
                    )
                last = f"HTTP {resp.status_code}: {body}"
                retry_after = _retry_after(resp.headers)
            if attempt < self.max_retries:
                with self._rng_lock:
                    delay = backoff_delay(attempt, self.backoff_base_s, self.backoff_max_s, self._rng, retry_after)
                log.debug("retrying %s in %.2fs after %s (attempt %d)", self._endpoint, delay, last, attempt + 1)
                time.sleep(delay)
        raise SamplerServerError(f"{self.base_url}{self._endpoint} failed after {self.max_retries + 1} attempts; last: {last}")

    # ------------------------------------------------------------------------------------------ sample

    def _payload(self, job: _Job, params: SamplingParams, n: int, attempt: int) -> dict[str, Any]:
        from selfimprove.chat import messages_of

        payload: dict[str, Any] = {"model": self.model, "max_tokens": job.max_tokens, "n": n}
        if self.chat:
            payload["messages"] = messages_of(job.problem.prompt, job.problem.messages)
        else:
            payload["prompt"] = job.problem.prompt
        declared_min = job.problem.meta.get("min_new_tokens")
        if declared_min:
            # Fixed-width answers: not in OpenAI's schema; vLLM and SGLang accept it.
            payload["min_tokens"] = min(int(declared_min), job.max_tokens)
        if job.greedy:
            payload.update(temperature=0.0, top_p=1.0)
        else:
            payload.update(temperature=params.temperature, top_p=params.top_p,
                           seed=request_seed(params.seed, job.problem.id, attempt))
            if params.top_k:
                payload["top_k"] = params.top_k  # not in OpenAI's schema; vLLM, SGLang and llama.cpp accept it
        if params.stop:
            payload["stop"] = list(params.stop)
        if params.logprobs:
            # completions: 1 rather than 0 (some servers read 0 as "off"); chat: a boolean (the chosen token's log-prob)
            payload["logprobs"] = True if self.chat else 1
        return payload

    def _record(self, choice: dict[str, Any], usage_tokens: int | None, job: _Job, params: SamplingParams) -> dict[str, Any]:
        text = ((choice.get("message") or {}).get("content") if self.chat else choice.get("text")) or ""
        reason = choice.get("finish_reason")
        finish = reason if reason in ("stop", "length") else ("error" if reason else "length")
        lp = choice.get("logprobs") or {}
        if self.chat and isinstance(lp, dict):  # chat schema: logprobs.content = [{token, logprob, ...}, ...]
            content = lp.get("content") or []
            token_lps = [c.get("logprob") for c in content] if content else None
            tokens = [c.get("token") for c in content] if content else None
        else:
            token_lps = lp.get("token_logprobs") if isinstance(lp, dict) else None
            tokens = lp.get("tokens") if isinstance(lp, dict) else None
        meta: dict[str, Any] = {}
        if tokens is not None:
            n_tokens = len(tokens)
            # An EOS stop reports the EOS token too (vLLM: stop_reason None); the transformers sampler does not
            # count it in n_tokens but keeps its log-prob, and so do we.
            if finish == "stop" and choice.get("stop_reason") is None and n_tokens and not text.endswith(tokens[-1] or "\0"):
                n_tokens -= 1
        elif usage_tokens is not None:
            n_tokens = usage_tokens
        else:
            n_tokens = 0
            meta["n_tokens_unknown"] = True
        if finish == "length" and job.answer_tokens and n_tokens >= job.answer_tokens:
            finish = "stop"  # the problem declares its answer length: reaching it is a natural end
        if params.stop and finish == "length":
            for s in params.stop:
                if s in text:
                    text, finish = text[: text.index(s)], "stop"
        out: dict[str, Any] = {
            "text": text,
            "n_tokens": n_tokens,
            "finish_reason": finish,
            "token_logprobs": None if not params.logprobs or token_lps is None
            else [round(float(x), 5) for x in token_lps if x is not None],
        }
        if meta:
            out["meta"] = meta
        return out

    def _run(self, job: _Job, params: SamplingParams) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        attempt = 0
        # Some servers (llama.cpp) return fewer choices than n: ask again for the rest with a new seed.
        while len(results) < job.n:
            want = job.n - len(results)
            data = self._post(self._payload(job, params, want, attempt))
            choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
            if not choices:
                raise SamplerServerError(f"{self.base_url}{self._endpoint} returned no choices for {job.problem.id!r}: {data!r:.300}")
            usage = (data.get("usage") or {}).get("completion_tokens")
            per_choice = usage if usage is not None and len(choices) == 1 else None
            results.extend(self._record(c, per_choice, job, params) | {"greedy": job.greedy} for c in choices[:want])
            attempt += 1
        return results

    def sample(self, problems: Sequence[Problem], params: SamplingParams, round: int, progress: bool = True) -> list[Completion]:
        from tqdm.auto import tqdm

        jobs: list[_Job] = []
        for i, p in enumerate(problems):
            declared = p.meta.get("max_new_tokens")
            alen = int(declared) if declared else None
            max_tokens = min(params.max_new_tokens, alen) if alen else params.max_new_tokens
            if params.greedy:
                jobs.append(_Job(i, p, True, 1, max_tokens, alen))
            if params.k:
                jobs.append(_Job(i, p, False, params.k, max_tokens, alen))
        results: dict[tuple[int, bool], list[dict[str, Any]]] = {}
        t0 = time.perf_counter()
        quiet = not progress or bool(os.environ.get("TQDM_DISABLE"))  # Ray workers set TQDM_DISABLE
        bar = tqdm(total=len(problems), desc=f"sample r{round} ({self.record_name})", unit="prob", disable=quiet,
                   leave=False)
        remaining = {i: 0 for i in range(len(problems))}
        for j in jobs:
            remaining[j.index] += 1
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="openai-sampler") as pool:
            futures: dict[Future, _Job] = {pool.submit(self._run, j, params): j for j in jobs}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for f in done:
                    if f.exception() is not None:
                        for other in pending:
                            other.cancel()
                        bar.close()
                        raise f.exception()  # type: ignore[misc]
                    job = futures[f]
                    results[(job.index, job.greedy)] = f.result()
                    remaining[job.index] -= 1
                    if remaining[job.index] == 0:
                        bar.update(1)
        bar.close()
        out: list[Completion] = []
        for i, p in enumerate(problems):
            recs = results.get((i, True), []) + results.get((i, False), [])
            out.extend(
                Completion(id=completion_id(p.id, s), problem_id=p.id, round=round, sample_idx=s, sampler=self.record_name, **r)
                for s, r in enumerate(recs)
            )
        log.info("sampled %d problems x %d from %s in %.1fs", len(problems), params.n_per_problem, self.base_url,
                 time.perf_counter() - t0)
        return out

    def close(self) -> None:
        self._client.close()
