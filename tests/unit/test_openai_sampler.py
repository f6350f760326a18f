"""The ``openai`` sampler against a local fake OpenAI-compatible server started in the test.

The fake serves ``GET /v1/models`` and ``POST /v1/completions`` like vLLM does (``choices`` with ``text``,
``finish_reason``, ``stop_reason`` and legacy ``logprobs``), and can be told to fail: per prompt, a script of
HTTP statuses to return before answering (``503``, ``429``, ``400``), a delay (for timeouts and for counting
concurrent requests), and a cap on the number of choices per response (llama.cpp-style servers). It records
every request, so the tests check what was sent (max_tokens, n, seed, stop, logprobs) as well as what came back.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from selfimprove.samplers import SAMPLERS, SamplingParams
from selfimprove.samplers.openai import (
    OpenAISampler,
    SamplerServerError,
    backoff_delay,
    normalize_base_url,
    request_seed,
)
from selfimprove.types import Problem


class FakeServer:
    def __init__(self, models: tuple[str, ...] = ("fake-model",)):
        self.models = models
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.script: dict[str, list[int]] = defaultdict(list)  # prompt -> statuses to return first
        self.delay_s: dict[str, float] = {}
        self.max_choices: int | None = None
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in outer.models]})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                chat = self.path == "/v1/chat/completions"
                if not chat and self.path != "/v1/completions":
                    self._send(404, {"error": "not found"})
                    return
                key = body["messages"][-1]["content"] if chat else body["prompt"]
                with outer.lock:
                    outer.requests.append(body | {"_path": self.path})
                    outer.headers.append(dict(self.headers))
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                    script = outer.script[key]
                    status = script.pop(0) if script else 200
                time.sleep(outer.delay_s.get(key, 0.0))
                # the request stops counting as in flight *before* its response goes out: once the client has the
                # response it may send the next request before this thread would run a later decrement
                with outer.lock:
                    outer.in_flight -= 1
                if status != 200:
                    headers = {"Retry-After": "0"} if status == 429 else {}
                    self._send(status, {"error": {"message": f"scripted {status}"}}, headers)
                    return
                self._send(200, outer.chat_completion(body) if chat else outer.completion(body))

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that timed out closed the socket under a delayed reply: expected here

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        """Deterministic 'model': greedy says 'abc'; samples are letters drawn from the request's seed."""
        n = body.get("n", 1) if self.max_choices is None else min(body.get("n", 1), self.max_choices)
        rng = random.Random(body.get("seed"))
        choices = []
        for i in range(n):
            full = "abc" if body["temperature"] == 0 else "".join(rng.choice("xyz") for _ in range(3))
            max_tokens = body["max_tokens"]
            tokens = list(full[:max_tokens])
            finish, stop_reason = ("stop", None) if len(full) < max_tokens else ("length", None)
            text = "".join(tokens)
            for s in body.get("stop") or []:
                if s in text:
                    cut = text.index(s)
                    tokens, text, finish, stop_reason = tokens[: cut + 1], text[:cut], "stop", s
            if finish == "stop" and stop_reason is None:
                tokens.append("</s>")
            choice: dict[str, Any] = {"index": i, "text": text, "finish_reason": finish, "stop_reason": stop_reason}
            if body.get("logprobs") is not None:
                choice["logprobs"] = {"tokens": tokens, "token_logprobs": [-0.25] * len(tokens), "top_logprobs": None}
            choices.append(choice)
        return {"id": "cmpl-1", "object": "text_completion", "model": body["model"], "choices": choices,
                "usage": {"completion_tokens": sum(len(c["text"]) for c in choices)}}

    def chat_completion(self, body: dict[str, Any]) -> dict[str, Any]:
        """The same 'model' behind the chat endpoint: ``message.content`` and chat-style ``logprobs.content``."""
        plain = self.completion(body | {"prompt": body["messages"][-1]["content"],
                                        "logprobs": 1 if body.get("logprobs") else None})
        choices = []
        for c in plain["choices"]:
            choice = {"index": c["index"], "message": {"role": "assistant", "content": c["text"]},
                      "finish_reason": c["finish_reason"], "stop_reason": c["stop_reason"]}
            if "logprobs" in c:
                choice["logprobs"] = {"content": [{"token": t, "logprob": lp, "top_logprobs": []} for t, lp in
                                                  zip(c["logprobs"]["tokens"], c["logprobs"]["token_logprobs"])]}
            choices.append(choice)
        return {"id": "chatcmpl-1", "object": "chat.completion", "model": body["model"], "choices": choices,
                "usage": plain["usage"]}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FakeServer]:
    s = FakeServer()
    yield s
    s.close()


def problems(n: int = 3, answer_tokens: int | None = None) -> list[Problem]:
    meta = {"max_new_tokens": answer_tokens} if answer_tokens else {}
    return [Problem(id=f"p/{i}", prompt=f"prompt {i}", meta=meta) for i in range(n)]


def fast(server: FakeServer, **kw: Any) -> OpenAISampler:
    """A sampler with millisecond backoff so retry tests take no time."""
    kw = {"base_url": server.url, "backoff_base_s": 0.001, "backoff_max_s": 0.01} | kw
    return OpenAISampler("unused-model-dir", **kw)


def test_registered_under_openai() -> None:
    assert SAMPLERS.get("openai") is OpenAISampler


def test_records_have_the_transformers_sampler_shape(server: FakeServer) -> None:
    params = SamplingParams(k=3, greedy=True, temperature=0.8, max_new_tokens=8, seed=7)
    with fast(server) as s:
        out = s.sample(problems(2), params, round=3, progress=False)
    assert [c.id for c in out] == [f"p/{i}#{j}" for i in range(2) for j in range(4)]
    for c in out:
        assert c.round == 3 and c.sampler == "openai" and c.problem_id == c.id.split("#")[0]
        assert c.greedy == (c.sample_idx == 0)
        assert c.finish_reason == "stop" and c.n_tokens == 3 == len(c.text)
        # the EOS log-prob is kept (n_tokens + 1 entries), as the transformers sampler does
        assert c.token_logprobs == [-0.25] * 4
    assert out[0].text == "abc"
    # what was sent: one greedy request (temperature 0, n=1) and one n=k request with a per-problem seed
    greedy = [r for r in server.requests if r["temperature"] == 0]
    sampled = [r for r in server.requests if r["temperature"] != 0]
    assert len(greedy) == 2 and all(r["n"] == 1 and "seed" not in r for r in greedy)
    assert len(sampled) == 2 and all(r["n"] == 3 and r["temperature"] == 0.8 for r in sampled)
    assert {r["seed"] for r in sampled} == {request_seed(7, "p/0"), request_seed(7, "p/1")}
    assert all(r["model"] == "fake-model" and r["logprobs"] == 1 and r["max_tokens"] == 8 for r in server.requests)


def test_per_problem_answer_length_caps_tokens_and_counts_as_stop(server: FakeServer) -> None:
    params = SamplingParams(k=1, greedy=True, max_new_tokens=8)
    with fast(server) as s:
        out = s.sample(problems(1, answer_tokens=2), params, round=1, progress=False)
    assert {r["max_tokens"] for r in server.requests} == {2}
    assert out[0].text == "ab" and out[0].finish_reason == "stop" and out[0].n_tokens == 2
    with fast(server) as s:
        out = s.sample(problems(1), SamplingParams(k=0, greedy=True, max_new_tokens=2), round=1, progress=False)
    assert out[0].finish_reason == "length"  # no declared answer length: running out of tokens is a cut


def test_stop_strings_are_sent_and_cut(server: FakeServer) -> None:
    with fast(server) as s:
        out = s.sample(problems(1), SamplingParams(k=0, greedy=True, stop=("b",)), round=1, progress=False)
    assert server.requests[0]["stop"] == ["b"]
    assert out[0].text == "a" and out[0].finish_reason == "stop" and out[0].n_tokens == 2


def test_logprobs_off_sends_none_and_records_none(server: FakeServer) -> None:
    with fast(server) as s:
        out = s.sample(problems(1), SamplingParams(k=2, logprobs=False), round=1, progress=False)
    assert all("logprobs" not in r for r in server.requests)
    assert all(c.token_logprobs is None for c in out)


def test_same_seed_same_samples_regardless_of_order(server: FakeServer) -> None:
    params = SamplingParams(k=4, greedy=False, seed=11)
    ps = problems(5)
    with fast(server, concurrency=4) as s:
        a = s.sample(ps, params, round=1, progress=False)
        b = s.sample(list(reversed(ps)), params, round=1, progress=False)
        c = s.sample(ps, SamplingParams(k=4, greedy=False, seed=12), round=1, progress=False)
    assert {x.id: x.text for x in a} == {x.id: x.text for x in b}
    assert [x.text for x in a] != [x.text for x in c]


def test_retries_5xx_and_429_then_succeeds(server: FakeServer) -> None:
    server.script["prompt 0"] = [503, 502]
    server.script["prompt 1"] = [429]
    with fast(server, max_retries=3) as s:
        out = s.sample(problems(2), SamplingParams(k=0, greedy=True), round=1, progress=False)
    assert [c.text for c in out] == ["abc", "abc"]
    per_prompt = [r["prompt"] for r in server.requests]
    assert per_prompt.count("prompt 0") == 3 and per_prompt.count("prompt 1") == 2


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_other_4xx_are_never_retried(server: FakeServer, status: int) -> None:
    server.script["prompt 0"] = [status]
    with fast(server, max_retries=5) as s, pytest.raises(SamplerServerError, match=f"HTTP {status} \\(not retried\\)"):
        s.sample(problems(1), SamplingParams(k=0, greedy=True), round=1, progress=False)
    assert len(server.requests) == 1


def test_gives_up_after_max_retries(server: FakeServer) -> None:
    server.script["prompt 0"] = [500] * 10
    with fast(server, max_retries=2) as s, pytest.raises(SamplerServerError, match="after 3 attempts; last: HTTP 500"):
        s.sample(problems(1), SamplingParams(k=0, greedy=True), round=1, progress=False)
    assert len(server.requests) == 3


def test_timeouts_are_retried_then_reported(server: FakeServer) -> None:
    server.delay_s["prompt 0"] = 0.5
    with fast(server, max_retries=1, timeout_s=0.1) as s, pytest.raises(SamplerServerError, match="ReadTimeout"):
        s.sample(problems(1), SamplingParams(k=0, greedy=True), round=1, progress=False)
    assert len(server.requests) == 2


def test_concurrency_limit_is_respected_and_used(server: FakeServer) -> None:
    for i in range(12):
        server.delay_s[f"prompt {i}"] = 0.05
    with fast(server, concurrency=3) as s:
        out = s.sample(problems(12), SamplingParams(k=1, greedy=True), round=1, progress=False)
    assert len(out) == 24
    assert 1 < server.max_in_flight <= 3


def test_fewer_choices_than_n_are_topped_up(server: FakeServer) -> None:
    server.max_choices = 1  # llama.cpp-style: ignores n
    with fast(server) as s:
        out = s.sample(problems(1), SamplingParams(k=3, greedy=False, seed=1), round=1, progress=False)
    assert [c.sample_idx for c in out] == [0, 1, 2]
    assert [r["n"] for r in server.requests] == [3, 2, 1]
    assert len({r["seed"] for r in server.requests}) == 3  # each top-up draws fresh samples


@pytest.mark.timeout(120)  # a hang guard only: the assertions below say why it cannot take long
def test_unreachable_server_fails_fast_naming_url_and_what_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fast = one ``GET /models`` with the connect timeout (5 s), then the error: no retries, no backoff. The
    attempts are counted at the transport, not timed, so a busy machine cannot fail the test."""
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    attempts: list[tuple[str, str, dict]] = []
    real = httpx.HTTPTransport.handle_request

    def handle_request(self, request):
        attempts.append((request.method, str(request.url), request.extensions.get("timeout", {})))
        return real(self, request)

    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", handle_request)
    with pytest.raises(SamplerServerError) as e:
        OpenAISampler("runs/r0/model", base_url=f"http://127.0.0.1:{port}")
    [(method, url, timeout)] = attempts  # exactly one attempt, no retry
    assert (method, url) == ("GET", f"http://127.0.0.1:{port}/v1/models")
    assert timeout["connect"] == 5.0  # connect_timeout_s: what bounds an attempt at a host that never answers
    assert f"http://127.0.0.1:{port}/v1" in str(e.value) and "vllm serve" in str(e.value)


def test_env_vars_model_resolution_and_api_key(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
    monkeypatch.setenv("MY_KEY", "sekrit")
    with OpenAISampler("unused", api_key_env="MY_KEY") as s:
        assert s.model == "fake-model" and s.base_url == server.url + "/v1"
        s.sample(problems(1), SamplingParams(k=0), round=1, progress=False)
    assert server.headers[-1]["Authorization"] == "Bearer sekrit"
    monkeypatch.setenv("OPENAI_MODEL", "explicit")
    with OpenAISampler("unused") as s:
        assert s.model == "explicit"


def test_no_url_and_ambiguous_model_are_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(SamplerServerError, match="sample.openai.base_url"):
        OpenAISampler("unused")
    two = FakeServer(models=("a", "b"))
    try:
        with pytest.raises(SamplerServerError, match="serves 2 models"):
            OpenAISampler("unused", base_url=two.url)
    finally:
        two.close()


def test_backoff_is_exponential_with_full_jitter() -> None:
    rng = random.Random(0)
    for attempt in range(6):
        cap = min(8.0, 0.5 * 2**attempt)
        delays = [backoff_delay(attempt, 0.5, 8.0, rng) for _ in range(200)]
        assert all(0 <= d <= cap for d in delays)
        assert max(delays) > 0.7 * cap and min(delays) < 0.3 * cap  # spread over the whole window
    assert backoff_delay(0, 0.5, 8.0, rng, retry_after=3.0) >= 3.0


def test_normalize_base_url() -> None:
    assert normalize_base_url("127.0.0.1:8000") == "http://127.0.0.1:8000/v1"
    assert normalize_base_url("https://api.example.com/v1/") == "https://api.example.com/v1"


def test_vllm_sampler_without_an_environment_says_what_to_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import selfimprove.samplers.vllm as vllm_sampler

    monkeypatch.setattr(vllm_sampler, "vllm_importable", lambda: False)
    assert SAMPLERS.get("vllm") is vllm_sampler.VllmSampler
    with pytest.raises(SamplerServerError, match="make vllm-env"):
        vllm_sampler.VllmSampler(tmp_path, python=str(tmp_path / "nope" / "python"))
    assert not list(tmp_path.glob("selfimprove-vllm-*"))


def test_vllm_sampler_connects_to_a_running_server(server: FakeServer) -> None:
    """``sample.vllm.base_url``: no server is started or stopped, records are labelled 'vllm'."""
    from selfimprove.samplers.vllm import VllmSampler

    with VllmSampler("unused", base_url=server.url) as s:
        assert s.mode == "server" and s._server is None
        out = s.sample(problems(2), SamplingParams(k=2, seed=1), round=1, progress=False)
    assert [c.sampler for c in out] == ["vllm"] * 6 and [c.sample_idx for c in out[:3]] == [0, 1, 2]
    assert server.requests  # it really talked to the server


def test_importing_the_package_imports_no_heavy_backend() -> None:
    import subprocess
    import sys

    code = ("import sys, selfimprove.samplers, selfimprove.samplers.openai, selfimprove.samplers.vllm, "
            "selfimprove.verifiers.judge, selfimprove.trainers, selfimprove.trainers.dpo, selfimprove.filters; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'vllm', 'trl', 'peft', 'torch', 'openai'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out


def test_chat_endpoint_sends_messages_and_reads_message_content(server: FakeServer) -> None:
    """model.chat: the problem's messages go to POST /v1/chat/completions; records keep the same shape."""
    probs = [Problem(id="q", prompt="raw q", messages=[{"role": "system", "content": "be brief"},
                                                       {"role": "user", "content": "q?"}]),
             Problem(id="r", prompt="r?")]
    s = fast(server, chat="always")
    out = s.sample(probs, SamplingParams(k=2, max_new_tokens=8, logprobs=True), round=1, progress=False)
    assert {r["_path"] for r in server.requests} == {"/v1/chat/completions"}
    sent = {r["messages"][-1]["content"]: r for r in server.requests}
    assert sent["q?"]["messages"] == probs[0].messages and "prompt" not in sent["q?"]
    assert sent["r?"]["messages"] == [{"role": "user", "content": "r?"}]  # a raw prompt becomes one user message
    assert sent["q?"]["logprobs"] is True
    greedy = [c for c in out if c.greedy]
    assert [c.text for c in greedy] == ["abc", "abc"] and all(c.finish_reason == "stop" for c in greedy)
    assert greedy[0].n_tokens == 3 and greedy[0].token_logprobs == [-0.25] * 4  # EOS's log-prob kept, not counted
    # never / auto without a local template: the completions endpoint with the raw prompt
    server.requests.clear()
    fast(server, chat="auto").sample(probs[:1], SamplingParams(k=0), round=1, progress=False)
    assert server.requests[0]["_path"] == "/v1/completions" and server.requests[0]["prompt"] == "raw q"
