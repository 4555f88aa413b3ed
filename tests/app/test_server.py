"""`mixdesk serve`: the OpenAI API over real HTTP on loopback, driven by the official client.

The server runs in a background thread (uvicorn on a free port); one test
runs `run_server` as a subprocess and stops it with Ctrl+C. A `PacedModel`
wraps the tiny model so a token step can be made long (a known sleep), which
turns "freed within one token step" into a count of forward calls.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
import torch

from mixdesk.app.server import (
    BackgroundServer,
    RequestRecord,
    check_bind,
    create_app,
    run_server,
)
from mixdesk.engine.errors import ServerConfigError
from mixdesk.engine.events import Done, SamplingParams
from mixdesk.engine.generate import generate
from mixdesk.engine.loader import LoadedModel, load_model
from mixdesk.engine.remote import RemoteEngine

MODEL_ID = "tiny-mixtral"
CONTEXT = 192
MESSAGES = [{"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": "What is the capital of France?"}]
WORDS = "sea star ship river stone cloud paris engine tree light code model token table".split()


class PacedModel:
    """The Transformer, with an optional sleep before each forward (one per token)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.delay = 0.0
        self.calls = 0
        self.fail_at: int | None = None  # raise on this call, to play a bug in the engine

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.fail_at == self.calls:
            raise RuntimeError("simulated engine bug")
        if self.delay:
            time.sleep(self.delay)
        return self.model(*args, **kwargs)


@dataclass
class Served:
    url: str
    lm: LoadedModel
    pace: PacedModel
    records: list[RequestRecord]

    def client(self, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=kwargs.pop("api_key", "unused"),
                             max_retries=0, timeout=kwargs.pop("timeout", 60), **kwargs)

    def post(self, path: str, body: Any, **kwargs: Any) -> httpx2.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx2.post(self.url + path, content=content, timeout=60,
                           headers={"Content-Type": "application/json",
                                    **kwargs.pop("headers", {})}, **kwargs)

    def wait_idle(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while httpx2.get(self.url.removesuffix("/v1") + "/health").json()["busy"]:
            assert time.monotonic() < deadline, "the server stayed busy"
            time.sleep(0.02)


@pytest.fixture(scope="module")
def paced_lm(tiny_mixtral: Path) -> Iterator[LoadedModel]:
    # a tiny model gains nothing from a second intra-op thread; on a shared 2-core box
    # the contention makes each step 10-100x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    lm = load_model(tiny_mixtral, context=CONTEXT)
    yield replace(lm, model=PacedModel(lm.model))  # type: ignore[arg-type]
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tiny_mixtral: Path) -> LoadedModel:
    """A second copy for direct engine calls: the server's worker owns the first."""
    return load_model(tiny_mixtral, context=CONTEXT)


@pytest.fixture(scope="module")
def served(paced_lm: LoadedModel) -> Iterator[Served]:
    records: list[RequestRecord] = []
    app = create_app(paced_lm, model_id=MODEL_ID, max_queue=8, on_request=records.append)
    with BackgroundServer(app) as server:
        yield Served(server.url, paced_lm, paced_lm.model, records)  # type: ignore[arg-type]


@pytest.fixture
def make_server(served: Served) -> Iterator[Callable[..., Served]]:
    """Another app over the same model, for other limits; the main one must be idle."""
    stack = ExitStack()

    def make(**kwargs: Any) -> Served:
        served.wait_idle()
        records: list[RequestRecord] = []
        app = create_app(served.lm, model_id=MODEL_ID, on_request=records.append, **kwargs)
        server = stack.enter_context(BackgroundServer(app))
        return Served(server.url, served.lm, served.pace, records)

    with stack:
        yield make
    served.pace.delay = 0.0


@pytest.fixture(autouse=True)
def _unpaced(served: Served) -> Iterator[None]:
    yield
    served.pace.delay = 0.0
    served.pace.fail_at = None  # a test that failed before clearing its fault: not the next's
    served.wait_idle()


def greedy(lm: LoadedModel, prompt: Any, *, chat: bool, max_tokens: int = 12,
           **params: Any) -> Done:
    settings = SamplingParams(temperature=0, max_new_tokens=max_tokens, **params)
    events = list(generate(lm, prompt, settings, chat=chat))
    assert isinstance(events[-1], Done), events[-1]
    return events[-1]


# --- what a client sees ---------------------------------------------------------------------


def test_models_lists_the_one_model(served: Served) -> None:
    client = served.client()
    assert [m.id for m in client.models.list().data] == [MODEL_ID]
    card = client.models.retrieve(MODEL_ID)
    assert card.owned_by == "mixdesk"
    assert card.model_extra == {"max_model_len": CONTEXT}
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_chat_greedy_equals_the_engine(served: Served, reference: LoadedModel) -> None:
    expected = greedy(reference, MESSAGES, chat=True)
    reply = served.client().chat.completions.create(
        model=MODEL_ID, messages=MESSAGES, temperature=0, max_tokens=12)  # type: ignore[arg-type]
    assert reply.model_extra is not None
    assert reply.model_extra["mixdesk"]["token_ids"] == list(expected.token_ids)
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == ("length" if expected.reason == "length" else "stop")
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == expected.stats.prompt_tokens
    assert reply.usage.completion_tokens == len(expected.token_ids)
    assert reply.usage.total_tokens == expected.stats.prompt_tokens + len(expected.token_ids)
    assert reply.model == MODEL_ID and reply.id.startswith("chatcmpl-")


def test_chat_stream_equals_the_engine(served: Served, reference: LoadedModel) -> None:
    expected = greedy(reference, MESSAGES, chat=True, max_tokens=20)
    stream = served.client().chat.completions.create(
        model=MODEL_ID, messages=MESSAGES, temperature=0, max_tokens=20,  # type: ignore[arg-type]
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    ids = [c.model_extra["mixdesk"]["token_id"] for c in chunks
           if c.model_extra and "token_id" in c.model_extra.get("mixdesk", {})]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert ids == list(expected.token_ids)
    assert text == expected.text
    assert finishes[-1] == ("length" if expected.reason == "length" else "stop")
    assert finishes[:-1] == [None] * (len(finishes) - 1)
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (expected.stats.prompt_tokens,
                                                              len(expected.token_ids))


def test_completions_equal_mixdesk_generate(served: Served, tiny_mixtral: Path,
                                            tmp_path: Path) -> None:
    prompt = "Once upon a time"
    cli = subprocess.run(
        [sys.executable, "-m", "mixdesk.app.cli", "generate", str(tiny_mixtral), "--prompt",
         prompt, "--temperature", "0", "--max-new-tokens", "16", "--context", str(CONTEXT),
         "--json"], capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "MIXDESK_HOME": str(tmp_path)})
    assert cli.returncode == 0, cli.stderr
    expected = json.loads(cli.stdout)
    client = served.client()
    reply = client.completions.create(model=MODEL_ID, prompt=prompt, temperature=0,
                                      max_tokens=16)
    assert reply.model_extra is not None
    assert reply.model_extra["mixdesk"]["token_ids"] == expected["token_ids"]
    assert reply.choices[0].text == expected["text"]
    assert reply.usage is not None and reply.usage.prompt_tokens == expected["prompt_tokens"]
    streamed = list(client.completions.create(model=MODEL_ID, prompt=prompt, temperature=0,
                                              max_tokens=16, stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == expected["text"]
    assert [c.model_extra["mixdesk"]["token_id"] for c in streamed
            if c.model_extra and "token_id" in c.model_extra.get("mixdesk", {})
            ] == expected["token_ids"]


def test_stop_strings_and_seeds_follow_the_engine(served: Served,
                                                  reference: LoadedModel) -> None:
    prompt = "The sea and the stars"
    free = greedy(reference, prompt, chat=False, max_tokens=24)
    stop = free.text[len(free.text) // 2:][:2]
    assert stop.strip("\ufffd"), free.text  # a stop string the answer really contains
    expected = greedy(reference, prompt, chat=False, max_tokens=24, stop=(stop,))
    assert expected.reason == "stop"
    client = served.client()
    reply = client.completions.create(model=MODEL_ID, prompt=prompt, temperature=0,
                                      max_tokens=24, stop=[stop, "never-in-this-answer"])
    assert reply.choices[0].text == expected.text
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model_extra is not None
    assert reply.model_extra["mixdesk"]["token_ids"] == list(expected.token_ids)

    sampled = SamplingParams(temperature=1.0, top_k=0, top_p=0.9, max_new_tokens=16, seed=1234)
    local = list(generate(reference, prompt, sampled))[-1]
    assert isinstance(local, Done)
    for _ in range(2):
        again = client.completions.create(model=MODEL_ID, prompt=prompt, temperature=1.0,
                                          top_p=0.9, max_tokens=16, seed=1234)
        assert again.model_extra is not None
        assert again.model_extra["mixdesk"]["token_ids"] == list(local.token_ids)


def test_harmless_openai_fields_are_accepted(served: Served) -> None:
    reply = served.client().chat.completions.create(
        model=MODEL_ID, n=1, user="editor-plugin", presence_penalty=0, frequency_penalty=0,
        messages=[{"role": "developer", "content": "Be brief."},
                  {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        max_tokens=3, temperature=0)
    assert reply.usage is not None and reply.usage.completion_tokens <= 3


# --- bad requests -----------------------------------------------------------------------------

CHAT = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
COMPLETE = {"model": MODEL_ID, "prompt": "hi", "max_tokens": 4}
BAD_REQUESTS = [
    ("invalid JSON", "/chat/completions", b'{"model": "tiny-mixtral", ', 400, None,
     "invalid_json"),
    ("not an object", "/chat/completions", b"[1, 2]", 400, None, "invalid_json"),
    ("temperature type", "/chat/completions", {**CHAT, "temperature": "hot"}, 400,
     "temperature", None),
    ("temperature range", "/chat/completions", {**CHAT, "temperature": 3}, 400, "temperature",
     None),
    ("top_p zero", "/completions", {**COMPLETE, "top_p": 0}, 400, "top_p", None),
    ("temperature NaN", "/completions", b'{"model": "tiny-mixtral", "prompt": "hi", '
     b'"temperature": NaN}', 400, "temperature", None),
    ("seed too large", "/completions", {**COMPLETE, "seed": 2**70}, 400, "seed", None),
    ("nested too deep", "/completions", b"[" * 100_000, 400, None, "invalid_json"),
    ("max_tokens float", "/chat/completions", {**CHAT, "max_tokens": 2.5}, 400, "max_tokens",
     None),
    ("max_tokens bool", "/chat/completions", {**CHAT, "max_tokens": True}, 400, "max_tokens",
     None),
    ("messages string", "/chat/completions", {**CHAT, "messages": "hi"}, 400, "messages", None),
    ("messages empty", "/chat/completions", {**CHAT, "messages": []}, 400, "messages", None),
    ("role tool", "/chat/completions",
     {**CHAT, "messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role", None),
    ("content number", "/chat/completions",
     {**CHAT, "messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content", None),
    ("image part", "/chat/completions",
     {**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
     "messages[0].content", None),
    ("stop number", "/completions", {**COMPLETE, "stop": 7}, 400, "stop", None),
    ("stop empty", "/completions", {**COMPLETE, "stop": [""]}, 400, "stop", None),
    ("stream string", "/chat/completions", {**CHAT, "stream": "yes"}, 400, "stream", None),
    ("n above 1", "/chat/completions", {**CHAT, "n": 2}, 400, "n", None),
    ("seed string", "/completions", {**COMPLETE, "seed": "42"}, 400, "seed", None),
    ("tools", "/chat/completions", {**CHAT, "tools": [{"type": "function"}]}, 400, "tools",
     None),
    ("logprobs", "/completions", {**COMPLETE, "logprobs": 2}, 400, "logprobs", None),
    ("penalty", "/completions", {**COMPLETE, "frequency_penalty": 0.5}, 400,
     "frequency_penalty", None),
    ("prompt object", "/completions", {**COMPLETE, "prompt": {"text": "hi"}}, 400, "prompt",
     None),
    ("token id out of vocab", "/completions", {**COMPLETE, "prompt": [1, 10**9]}, 400, "prompt",
     None),
    ("model missing", "/chat/completions", {k: v for k, v in CHAT.items() if k != "model"}, 400,
     "model", None),
    ("unknown model", "/chat/completions", {**CHAT, "model": "gpt-4o"}, 404, "model",
     "model_not_found"),
    ("max_tokens over the context", "/chat/completions", {**CHAT, "max_tokens": CONTEXT}, 400,
     "max_tokens", "context_length_exceeded"),
    ("prompt over the context", "/completions",
     {**COMPLETE, "prompt": "the sea and the stars " * CONTEXT}, 400, "prompt",
     "context_length_exceeded"),
]


def assert_openai_error(response: httpx2.Response, status: int, param: str | None = None,
                        code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and len(error["message"]) > 10
    assert isinstance(error["type"], str) and error["type"]
    assert error["param"] == param
    assert error["code"] == code
    return error


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS])
def test_bad_request_gets_an_openai_error(served: Served, case: tuple[Any, ...]) -> None:
    _, path, body, status, param, code = case
    before = served.pace.calls
    error = assert_openai_error(served.post(path, body), status, param, code)
    assert error["type"] == "invalid_request_error"
    assert served.pace.calls == before  # refused before it reached the model


def test_the_official_client_raises_typed_errors(served: Served) -> None:
    client = served.client()
    with pytest.raises(openai.BadRequestError, match="at most"):
        client.chat.completions.create(model=MODEL_ID, messages=CHAT["messages"],  # type: ignore
                                       max_tokens=CONTEXT + 1)
    with pytest.raises(openai.NotFoundError, match="gpt-4o"):
        client.completions.create(model="gpt-4o", prompt="hi")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversized_body_gets_413(make_server: Callable[..., Served], chunked: bool) -> None:
    server = make_server(max_body_bytes=4096)
    body = json.dumps({**COMPLETE, "prompt": "x" * 5000}).encode()
    content: Any = iter([body[:3000], body[3000:]]) if chunked else body
    response = httpx2.post(server.url + "/completions", content=content, timeout=30,
                           headers={"Content-Type": "application/json"})
    assert_openai_error(response, 413, code="request_too_large")
    assert server.records[-1].status == 413
    ok = server.post("/completions", {**COMPLETE, "prompt": "x" * 100})
    assert ok.status_code == 200, ok.text


def test_unknown_route_and_method_are_openai_errors(served: Served) -> None:
    assert_openai_error(httpx2.get(served.url + "/embeddings"), 404)
    assert_openai_error(httpx2.get(served.url + "/chat/completions"), 405)


# --- safety ---------------------------------------------------------------------------------


def test_api_key_is_required_when_set(make_server: Callable[..., Served]) -> None:
    server = make_server(api_key="s3cret-key")
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key="wrong").models.list()
    missing = httpx2.get(server.url + "/models")
    assert_openai_error(missing, 401, code="invalid_api_key")
    wrong = server.post("/chat/completions", CHAT, headers={"Authorization": "Bearer nope"})
    assert_openai_error(wrong, 401, code="invalid_api_key")
    assert httpx2.get(server.url.removesuffix("/v1") + "/health").status_code == 200
    good = server.client(api_key="s3cret-key")
    assert [m.id for m in good.models.list().data] == [MODEL_ID]
    reply = good.chat.completions.create(model=MODEL_ID, messages=CHAT["messages"],  # type: ignore
                                         max_tokens=2)
    assert reply.usage is not None and reply.usage.completion_tokens >= 1


def test_keyless_server_answers_only_loopback_hosts(served: Served) -> None:
    # a web page can point its own host name at 127.0.0.1 (DNS rebinding)
    response = served.post("/chat/completions", CHAT, headers={"Host": "evil.example:8080"})
    assert_openai_error(response, 403, code="host_not_allowed")
    for host in ("localhost:1", "127.0.0.1", "[::1]:8080", "[::1]", "127.0.0.1:80"):
        models = httpx2.get(served.url + "/models", headers={"Host": host})
        assert models.status_code == 200, host


@pytest.mark.parametrize(("host", "key", "refused"), [
    ("127.0.0.1", None, False), ("localhost", None, False), ("::1", None, False),
    ("127.0.0.2", None, False), ("0.0.0.0", None, True), ("::", None, True),
    ("192.168.1.20", None, True), ("my-desktop.lan", None, True), ("0.0.0.0", "k3y", False),
    ("0.0.0.0", " ", True),
])
def test_check_bind(host: str, key: str | None, refused: bool) -> None:
    if refused:
        with pytest.raises(ServerConfigError, match="API key"):
            check_bind(host, key)
    else:
        check_bind(host, key)


def test_run_server_refuses_an_open_bind_before_loading(tmp_path: Path) -> None:
    # the folder does not exist: reaching the loader would raise ModelFormatError instead
    with pytest.raises(ServerConfigError, match="--api-key"):
        run_server(str(tmp_path / "no-model"), host="0.0.0.0", port=0, api_key=None,
                   device="cpu", dtype="float32", context=None)


def test_run_server_names_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServerConfigError, match=f"127.0.0.1:{port}.*--port"):
            run_server(str(tmp_path / "no-model"), host="127.0.0.1", port=port, api_key=None,
                       device="cpu", dtype="float32", context=None)


# --- the queue, load and disconnects --------------------------------------------------------


def _open_stream(stack: ExitStack, client: httpx2.Client, max_tokens: int) -> httpx2.Response:
    body = {**CHAT, "max_tokens": max_tokens, "stream": True}
    response = stack.enter_context(client.stream("POST", "chat/completions", json=body))
    assert response.status_code == 200
    return response


def test_full_queue_gets_429_and_left_clients_cost_nothing(
        make_server: Callable[..., Served]) -> None:
    server = make_server(max_queue=1)
    server.pace.delay = 0.05
    with ExitStack() as stack:
        client = stack.enter_context(httpx2.Client(base_url=server.url + "/", timeout=30))
        running = _open_stream(stack, client, max_tokens=100)
        _open_stream(stack, client, max_tokens=100)  # waits behind it
        health = httpx2.get(server.url.removesuffix("/v1") + "/health").json()
        assert health == {"status": "ok", "busy": True, "waiting": 1}
        refused = server.post("/chat/completions", CHAT)
        assert_openai_error(refused, 429, code="queue_full")
        assert refused.headers["retry-after"] == "1"
        assert next(running.iter_lines()).startswith("data: ")
    # both streams are closed: the running one stops, the waiting one never starts
    server.wait_idle(timeout=5)
    settled = server.pace.calls
    ok = server.post("/chat/completions", {**CHAT, "max_tokens": 1})
    assert ok.status_code == 200, ok.text
    assert server.pace.calls == settled + 1  # one prefill: nothing of the closed streams ran
    assert sorted(r.status for r in server.records) == [200, 429, 499, 499]


def test_disconnect_frees_the_engine_within_one_token_step(served: Served) -> None:
    step = 0.25
    served.pace.delay = step
    with ExitStack() as stack:
        client = stack.enter_context(httpx2.Client(base_url=served.url + "/", timeout=30))
        stream = _open_stream(stack, client, max_tokens=150)  # 37 s if nobody stopped it
        tokens = 0
        for line in stream.iter_lines():
            if '"token_id"' in line:
                tokens += 1
            if tokens == 3:
                break
    closed_at = time.monotonic()
    calls_at_close = served.pace.calls
    reply = served.client().chat.completions.create(
        model=MODEL_ID, messages=CHAT["messages"], max_tokens=1)  # type: ignore[arg-type]
    waited = time.monotonic() - closed_at
    assert reply.usage is not None and reply.usage.completion_tokens == 1
    # at most the step in flight when the client left, then the new request's prefill
    assert served.pace.calls - calls_at_close <= 2
    assert waited < 3 * step + 1.0, waited
    print(f"\nnext request answered {waited:.2f} s after the disconnect (step {step} s)")


def test_load_16_clients_5_requests_each(served: Served, reference: LoadedModel) -> None:
    clients, per_client, max_tokens = 16, 5, 8
    rng = random.Random(0)  # six random words each: the tiny model's answers then all differ
    prompts = {(c, r): " ".join(rng.choice(WORDS) for _ in range(6))
               for c in range(clients) for r in range(per_client)}
    expected = {key: greedy(reference, [{"role": "user", "content": p}], chat=True,
                            max_tokens=max_tokens).token_ids for key, p in prompts.items()}
    # distinct answers, so an answer that mixed two requests could not pass for either
    assert len(set(expected.values())) == len(expected)

    def one_client(c: int) -> list[tuple[str, tuple[int, ...] | None]]:
        client = served.client(timeout=60)
        results: list[tuple[str, tuple[int, ...] | None]] = []
        for r in range(per_client):
            messages = [{"role": "user", "content": prompts[c, r]}]
            try:
                if (c + r) % 2:
                    chunks = list(client.chat.completions.create(
                        model=MODEL_ID, messages=messages, temperature=0,  # type: ignore
                        max_tokens=max_tokens, stream=True))
                    ids = tuple(ch.model_extra["mixdesk"]["token_id"] for ch in chunks
                                if ch.model_extra and "token_id" in ch.model_extra["mixdesk"])
                else:
                    reply = client.chat.completions.create(
                        model=MODEL_ID, messages=messages, temperature=0,  # type: ignore
                        max_tokens=max_tokens)
                    assert reply.model_extra is not None
                    ids = tuple(reply.model_extra["mixdesk"]["token_ids"])
                results.append(("answered", ids))
                assert ids == expected[c, r], (c, r)
            except openai.RateLimitError:
                results.append(("429", None))
        return results

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(one_client, c) for c in range(clients)]
        outcomes = [f.result(timeout=180) for f in futures]
    elapsed = time.monotonic() - started
    flat = [kind for outcome in outcomes for kind, _ in outcome]
    assert len(flat) == clients * per_client
    assert set(flat) <= {"answered", "429"}
    assert flat.count("answered") >= clients  # the queue holds 9, so most get through
    print(f"\n{clients}x{per_client} requests in {elapsed:.1f} s: "
          f"{flat.count('answered')} answered, {flat.count('429')} got 429")
    assert elapsed < 180
    after = served.client().chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": prompts[0, 0]}],  # type: ignore
        temperature=0, max_tokens=max_tokens)
    assert after.model_extra is not None
    assert tuple(after.model_extra["mixdesk"]["token_ids"]) == expected[0, 0]


# --- run_server, as `mixdesk serve` runs it ----------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_run_server_serves_until_ctrl_c(tiny_mixtral: Path, tmp_path: Path) -> None:
    port = _free_port()
    code = ("import sys; from mixdesk.app.server import run_server; "
            "sys.exit(run_server(sys.argv[1], port=int(sys.argv[2]), api_key='k', "
            "device='cpu', dtype='float32', context=128))")
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(tiny_mixtral), str(port)], stderr=subprocess.PIPE,
        text=True, env={**os.environ, "MIXDESK_HOME": str(tmp_path)})
    try:
        assert process.stderr is not None
        banner = process.stderr.readline()
        assert f"http://127.0.0.1:{port}/v1" in banner and "API key required" in banner, banner
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k",
                               max_retries=0, timeout=60)
        reply = client.completions.create(model=tiny_mixtral.name, prompt="hi", max_tokens=2)
        assert reply.usage is not None and reply.usage.completion_tokens >= 1
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_only_the_server_imports_the_web_stack() -> None:
    code = ("import sys; import mixdesk.app.cli, mixdesk.engine.remote; "
            "print(sorted(m for m in ('starlette', 'uvicorn', 'PySide6', 'torch') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.strip() == "[]"


def test_an_engine_bug_is_a_500_and_the_worker_survives(served: Served) -> None:
    served.pace.fail_at = served.pace.calls + 1
    whole = served.post("/chat/completions", CHAT)
    error = assert_openai_error(whole, 500)
    assert error["type"] == "server_error" and "simulated engine bug" in error["message"]
    served.pace.fail_at = served.pace.calls + 3  # the third token's step
    client = served.client()  # held: a collected client closes the stream's socket mid-read
    lines = list(client.with_raw_response.chat.completions.create(  # greedy: a sampled eos
        model=MODEL_ID, messages=CHAT["messages"], max_tokens=8,  # type: ignore[arg-type]
        temperature=0, stream=True).http_response.iter_lines())  # would end it before step 3
    client.close()
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert sum("token_id" in e.get("mixdesk", {}) for e in events) == 2
    assert events[-1]["error"]["type"] == "server_error"
    assert [line for line in lines if line][-1] == "data: [DONE]"
    served.pace.fail_at = None
    ok = served.post("/chat/completions", CHAT)
    assert ok.status_code == 200, ok.text


def test_request_log_records_each_request(served: Served) -> None:
    served.records.clear()
    served.client().completions.create(model=MODEL_ID, prompt="hi", max_tokens=3,
                                       temperature=0)
    served.post("/completions", {**COMPLETE, "n": 3})
    ok, refused = served.records
    assert (ok.method, ok.path, ok.status, ok.completion_tokens) == (
        "POST", "/v1/completions", 200, 3)
    assert ok.finish_reason in ("length", "eos") and ok.prompt_tokens > 0 and ok.seconds > 0
    assert (refused.status, refused.completion_tokens) == (400, 0)


def test_threads_are_cleaned_up_by_stop(paced_lm: LoadedModel) -> None:
    before = {t.name for t in threading.enumerate()}
    server = BackgroundServer(create_app(paced_lm, model_id=MODEL_ID))
    server.start()
    server.stop()
    after = {t.name for t in threading.enumerate()}
    assert not {"mixdesk-server", "mixdesk-generate"} & (after - before)


@pytest.mark.slow
def test_the_demo_model_answers_paris_through_the_server(smol_moe: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        lm = load_model(smol_moe, context=256)
        question = [{"role": "user", "content": "What is the capital of France?"}]
        local = greedy(lm, question, chat=True, max_tokens=16)  # before the server owns lm
        with BackgroundServer(create_app(lm, model_id="smol-moe")) as server:
            reply = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0,
                                  timeout=300).chat.completions.create(
                model="smol-moe", messages=question, temperature=0,  # type: ignore[arg-type]
                max_tokens=16)
            with RemoteEngine(server.url) as remote:
                events = list(remote.generate(question, SamplingParams(temperature=0,
                                                                       max_new_tokens=16)))
    finally:
        torch.set_num_threads(threads)
    assert "Paris" in local.text
    assert reply.choices[0].message.content == local.text
    assert reply.model_extra is not None
    assert reply.model_extra["mixdesk"]["token_ids"] == list(local.token_ids)
    done = events[-1]
    assert isinstance(done, Done) and done.token_ids == local.token_ids
