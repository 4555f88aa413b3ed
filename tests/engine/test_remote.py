"""RemoteEngine: the local engine's events, from an OpenAI-compatible server.

Against `mixdesk serve` (in a thread, on loopback) the events must equal the
local engine's. Servers that are not mixdesk, and failures of the network, are
played by an httpx2 MockTransport, or by a loopback socket that never answers.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx2
import pytest
import torch

from mixdesk.app.server import BackgroundServer, create_app
from mixdesk.engine.errors import InvalidRequestError, RemoteAuthError, RemoteEngineError
from mixdesk.engine.events import Done, Event, Failed, SamplingParams, Stats, Token
from mixdesk.engine.generate import generate
from mixdesk.engine.loader import LoadedModel, load_model
from mixdesk.engine.remote import RemoteEngine, normalize_base_url

MODEL_ID = "tiny-mixtral"
KEY = "remote-test-key"
CONTEXT = 160
GREEDY = SamplingParams(temperature=0, max_new_tokens=14)
MESSAGES = [{"role": "system", "content": "Answer in one line."},
            {"role": "user", "content": "Name a river."}]


class SlowModel:
    """The Transformer with a settable sleep per forward, so a token step is long."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.delay = 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self.delay)
        return self.model(*args, **kwargs)


@pytest.fixture(scope="module")
def served_lm(tiny_mixtral: Path) -> Iterator[LoadedModel]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model only loses from thread contention on 2 cores
    lm = load_model(tiny_mixtral, context=CONTEXT)
    yield replace(lm, model=SlowModel(lm.model))  # type: ignore[arg-type]
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def local(tiny_mixtral: Path) -> LoadedModel:
    """The same model for the local engine; the server's worker owns the other copy."""
    return load_model(tiny_mixtral, context=CONTEXT)


@pytest.fixture(scope="module")
def url(served_lm: LoadedModel) -> Iterator[str]:
    with BackgroundServer(create_app(served_lm, model_id=MODEL_ID, api_key=KEY)) as server:
        yield server.url


@pytest.fixture
def remote(url: str) -> Iterator[RemoteEngine]:
    with RemoteEngine(url, api_key=KEY) as engine:
        yield engine


def mock_engine(handler: Callable[[httpx2.Request], httpx2.Response], **kwargs: Any
                ) -> RemoteEngine:
    return RemoteEngine("http://gpu-box.example:8000/v1", transport=httpx2.MockTransport(handler),
                        **kwargs)


def kinds(events: list[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


# --- against mixdesk serve ------------------------------------------------------------------


def test_models_and_context(remote: RemoteEngine) -> None:
    assert remote.models() == [MODEL_ID]
    assert remote.context_max == {MODEL_ID: CONTEXT}


@pytest.mark.parametrize(("prompt", "chat"), [
    (MESSAGES, True), ("Name a river.", True), ("Once upon a time", False), ([1, 40, 41], False),
], ids=["messages", "text-as-chat", "completion", "token-ids"])
def test_greedy_events_equal_the_local_engine(remote: RemoteEngine, local: LoadedModel,
                                              prompt: Any, chat: bool) -> None:
    expected = list(generate(local, prompt, GREEDY, chat=chat))
    got = list(remote.generate(prompt, GREEDY, chat=chat))
    assert kinds(got) == kinds(expected)
    assert [(e.id, e.text) for e in got if isinstance(e, Token)] == \
        [(e.id, e.text) for e in expected if isinstance(e, Token)]
    done, want = got[-1], expected[-1]
    assert isinstance(done, Done) and isinstance(want, Done)
    assert (done.reason, done.text, done.token_ids) == (want.reason, want.text, want.token_ids)
    stats = done.stats
    assert (stats.prompt_tokens, stats.generated_tokens, stats.context_used, stats.context_max) \
        == (want.stats.prompt_tokens, want.stats.generated_tokens, want.stats.context_used,
            CONTEXT)
    assert isinstance(got[0], Stats) and got[0].prompt_tokens == want.stats.prompt_tokens


def test_stop_string_reason_is_exact(remote: RemoteEngine, local: LoadedModel) -> None:
    free = list(generate(local, "The sea", GREEDY))[-1]
    assert isinstance(free, Done)
    params = replace(GREEDY, stop=(free.text[4:6],))
    want = list(generate(local, "The sea", params))[-1]
    done = list(remote.generate("The sea", params, chat=False))[-1]
    assert isinstance(want, Done) and want.reason == "stop"
    assert isinstance(done, Done)
    assert (done.reason, done.text, done.token_ids) == (want.reason, want.text, want.token_ids)


def test_cancel_closes_the_stream_and_frees_the_server(remote: RemoteEngine,
                                                       served_lm: LoadedModel) -> None:
    slow: SlowModel = served_lm.model  # type: ignore[assignment]
    slow.delay = step = 0.2
    try:
        cancel = threading.Event()
        events = []
        for event in remote.generate(MESSAGES, replace(GREEDY, max_new_tokens=100),
                                     cancel=cancel):
            events.append(event)
            if sum(isinstance(e, Token) for e in events) == 2:
                cancel.set()
        done = events[-1]
        assert isinstance(done, Done) and done.reason == "cancelled"
        assert done.stats.generated_tokens == 2
        cancelled_at = time.monotonic()
        health = remote.base_url.removesuffix("/v1") + "/health"
        while httpx2.get(health).json()["busy"]:
            # uncancelled, the rest of the answer would take 98 * step = 19.6 s
            assert time.monotonic() - cancelled_at < 40 * step, "the server kept generating"
            time.sleep(0.02)
    finally:
        slow.delay = 0.0


def test_server_refusals_become_failed_events(url: str) -> None:
    with RemoteEngine(url, api_key=KEY) as engine:
        too_long = list(engine.generate("hi", replace(GREEDY, max_new_tokens=CONTEXT * 2)))
    assert kinds(too_long) == ["Failed"]
    failed = too_long[0]
    assert isinstance(failed, Failed) and failed.kind == "InvalidRequestError"
    assert "max_tokens" in failed.message and "at most" in failed.message
    with RemoteEngine(url, api_key=KEY, model="mixtral-8x22b") as engine:
        unknown = list(engine.generate("hi", GREEDY))
    assert isinstance(unknown[0], Failed) and unknown[0].kind == "RemoteEngineError"
    assert "mixtral-8x22b" in unknown[0].message and MODEL_ID in unknown[0].message


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_a_refused_key_is_an_auth_error(url: str, key: str | None) -> None:
    with RemoteEngine(url, api_key=key) as engine:
        with pytest.raises(RemoteAuthError, match="API key"):
            engine.models()
        events = list(engine.generate("hi", GREEDY))
    assert isinstance(events[0], Failed) and events[0].kind == "RemoteAuthError"


# --- failures of the network ----------------------------------------------------------------


def test_connection_refused_says_what_to_do() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed when the block ends: nothing listens there
    with RemoteEngine(f"http://127.0.0.1:{port}") as engine:
        with pytest.raises(RemoteEngineError, match="cannot connect.*mixdesk serve"):
            engine.models()
        events = list(engine.generate("hi", GREEDY))
    assert isinstance(events[0], Failed) and events[0].kind == "RemoteEngineError"


def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel accepts connections; nobody ever answers
        port = silent.getsockname()[1]
        with RemoteEngine(f"http://127.0.0.1:{port}/v1", read_timeout=0.5) as engine:
            started = time.monotonic()
            with pytest.raises(RemoteEngineError, match="sent nothing for 0.5 s"):
                engine.models()
            assert time.monotonic() - started < 5


@pytest.mark.parametrize(("raised", "words"), [
    (httpx2.ConnectError("[Errno -2] Name or service not known"), "cannot find the host"),
    (httpx2.ConnectTimeout("timed out"), "did not accept a connection within 10 s"),
    (httpx2.RemoteProtocolError("peer closed connection"), "connection to .* failed"),
])
def test_network_errors_are_typed(raised: Exception, words: str) -> None:
    def handler(_: httpx2.Request) -> httpx2.Response:
        raise raised

    with pytest.raises(RemoteEngineError, match=words):
        mock_engine(handler).models()


@pytest.mark.parametrize(("status", "error", "words"), [
    (401, RemoteAuthError, "needs an API key"),
    (403, RemoteAuthError, "refused the request"),
    (404, RemoteEngineError, "usually ends in /v1"),
    (429, RemoteEngineError, "busy"),
    (400, InvalidRequestError, "refused the request"),
    (503, RemoteEngineError, "failed \\(503\\)"),
])
def test_http_errors_are_typed(status: int, error: type[Exception], words: str) -> None:
    def handler(_: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, json={"error": {"message": "nope", "type": "x",
                                                        "param": None, "code": None}})

    with pytest.raises(error, match=words):
        mock_engine(handler).models()


def test_not_an_openai_server() -> None:
    def handler(_: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, text="<html>router login</html>")

    with pytest.raises(RemoteEngineError, match="OpenAI-compatible"):
        mock_engine(handler).models()


# --- servers that are not mixdesk (vLLM streams text only) ------------------------------------


def sse(*chunks: dict[str, Any] | str) -> bytes:
    return b"".join(f"data: {c if isinstance(c, str) else json.dumps(c)}\n\n".encode()
                    for c in chunks)


def vllm_like(stream: bytes, seen: list[dict[str, Any]]) -> Callable[..., httpx2.Response]:
    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.path == "/v1/models":
            return httpx2.Response(200, json={"object": "list", "data": [
                {"id": "mixtral-8x22b-w4a16", "object": "model", "max_model_len": 65536}]})
        seen.append({"path": request.url.path, "auth": request.headers.get("authorization"),
                     **json.loads(request.content)})
        return httpx2.Response(200, content=stream,
                               headers={"Content-Type": "text/event-stream"})
    return handler


def chunk(content: str | None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


def test_a_text_only_stream_gives_the_same_event_kinds() -> None:
    stream = sse(chunk(""), chunk("Rhine"), chunk(" and"), chunk(" Seine"), chunk(None, "stop"),
                 {"id": "chatcmpl-1", "choices": [], "usage": {
                     "prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}},
                 "[DONE]")
    seen: list[dict[str, Any]] = []
    engine = mock_engine(vllm_like(stream, seen), api_key="sk-local")
    params = SamplingParams(temperature=0.3, top_k=20, top_p=0.9, repetition_penalty=1.1,
                            max_new_tokens=64, seed=5, stop=("\n\n",))
    events = list(engine.generate(MESSAGES, params))
    assert kinds(events) == ["Stats", "Token", "Token", "Token", "Done"]
    assert [e.id for e in events if isinstance(e, Token)] == [-1, -1, -1]
    done = events[-1]
    assert isinstance(done, Done)
    assert (done.reason, done.text, done.token_ids) == ("eos", "Rhine and Seine", ())
    assert (done.stats.prompt_tokens, done.stats.context_max) == (9, 65536)
    assert seen == [{
        "path": "/v1/chat/completions", "auth": "Bearer sk-local",
        "model": "mixtral-8x22b-w4a16", "messages": MESSAGES, "stream": True,
        "stream_options": {"include_usage": True}, "temperature": 0.3, "top_p": 0.9,
        "max_tokens": 64, "seed": 5, "stop": ["\n\n"], "top_k": 20, "repetition_penalty": 1.1}]


def test_an_error_mid_stream_keeps_the_partial_answer() -> None:
    stream = sse(chunk("Rhine"), {"error": {"message": "CUDA out of memory", "type":
                                            "server_error", "param": None, "code": None}})
    events = list(mock_engine(vllm_like(stream, [])).generate("hi", GREEDY))
    assert kinds(events) == ["Stats", "Token", "Failed"]
    failed = events[-1]
    assert isinstance(failed, Failed)
    assert failed.kind == "RemoteEngineError" and "CUDA out of memory" in failed.message
    assert failed.partial_text == "Rhine"


def test_a_stream_cut_short_is_an_error() -> None:
    events = list(mock_engine(vllm_like(sse(chunk("Rhine")), [])).generate("hi", GREEDY))
    assert kinds(events) == ["Stats", "Token", "Failed"]
    assert "before the answer finished" in events[-1].message  # type: ignore[union-attr]


@pytest.mark.parametrize(("given", "expected"), [
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080/v1"),
    ("http://127.0.0.1:8080/", "http://127.0.0.1:8080/v1"),
    ("http://gpu-box:8000/v1/", "http://gpu-box:8000/v1"),
    (" https://example.com/openai/v1 ", "https://example.com/openai/v1"),
])
def test_base_urls(given: str, expected: str) -> None:
    assert normalize_base_url(given) == expected


@pytest.mark.parametrize("bad", ["localhost:8080", "ftp://host/v1", "http://", ""])
def test_bad_base_urls_are_refused(bad: str) -> None:
    with pytest.raises(RemoteEngineError, match="URL|host"):
        RemoteEngine(bad)
