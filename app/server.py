"""`mixdesk serve`: an OpenAI-compatible HTTP server over one loaded model.

Editors, scripts and other chat apps speak the OpenAI API, so the local model
answers at `/v1/chat/completions`, `/v1/completions` and `/v1/models`, with
`/health` for probes. Only this module imports the ASGI stack (Starlette,
uvicorn); `mixdesk generate` and `mixdesk gui` never load it.

Generation is synchronous and owns the model, so one worker thread runs one
request at a time, fed by a bounded queue: a request that finds it full gets
429 at once. Tokens cross to the event loop with `call_soon_threadsafe`. A
client that goes away sets its request's cancel flag, which the engine checks
before every token, so the worker is free within one token step.

Safety: loopback by default; any other bind needs an API key. Without a key,
requests whose Host header is not loopback are refused (DNS rebinding). The
body size, `max_tokens` and the prompt's length are checked against the
limits before a request takes a queue slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import math
import queue
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import uvicorn
from jinja2 import TemplateError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from mixdesk.engine.errors import MixdeskError, ServerConfigError
from mixdesk.engine.events import Done, Event, Failed, SamplingParams, Token
from mixdesk.engine.generate import encode_prompt, generate
from mixdesk.engine.loader import LoadedModel

log = logging.getLogger("mixdesk.server")

DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB: a full 32k-token chat is about 130 kB of JSON
MAX_STOP_STRINGS = 16
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}  # ours -> OpenAI's
LOOPBACK_NAMES = ("localhost",)


class ApiError(Exception):
    """A request the server refuses; becomes OpenAI's error JSON with `status`."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind

    def response(self) -> JSONResponse:
        headers = {"Retry-After": "1"} if self.status == 429 else None
        return JSONResponse(error_body(self.message, self.kind, self.param, self.code),
                            status_code=self.status, headers=headers)


def error_body(message: str, kind: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass(frozen=True)
class RequestRecord:
    """One answered request, for the GUI's request log and for tests.

    Attributes:
        method, path, status: the HTTP request and the status it got.
        stream: whether the answer was streamed.
        prompt_tokens, completion_tokens: 0 when the request never ran.
        finish_reason: ours ("eos", "stop", "length", "cancelled"), or "" when it never ran.
        seconds: from the request's arrival to its last byte.
        finished_at: `time.monotonic()` when it ended.
    """

    method: str
    path: str
    status: int
    stream: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""
    seconds: float = 0.0
    finished_at: float = 0.0


# --- the worker: one generation at a time -------------------------------------------------


@dataclass
class _Job:
    """One generation request on its way through the worker.

    The worker thread pushes engine events, then None, into `events` through
    the event loop that owns it.
    """

    prompt_ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Event | None] = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)

    def deliver(self, event: Event | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server has stopped
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    async def stream(self) -> AsyncIterator[Event]:
        while (event := await self.events.get()) is not None:
            yield event


class GenerationQueue:
    """One worker thread that owns the model, behind a bounded queue.

    Attributes:
        max_waiting: requests that may wait while one runs; more get 429.
    """

    def __init__(self, lm: LoadedModel, max_waiting: int) -> None:
        self.lm = lm
        self.max_waiting = max_waiting
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._admitted: list[_Job] = []  # running first, then waiting
        self._thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        return bool(self._admitted)

    @property
    def waiting(self) -> int:
        return max(0, len(self._admitted) - 1)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mixdesk-generate",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel everything admitted and end the worker."""
        self.cancel_all()
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout)
            self._thread = None

    def cancel_all(self) -> None:
        with self._lock:
            for job in self._admitted:
                job.cancel.set()

    def submit(self, job: _Job) -> bool:
        """Admit a job, or return False when the queue is full."""
        with self._lock:
            if len(self._admitted) > self.max_waiting:
                return False
            self._admitted.append(job)
        self._jobs.put(job)
        return True

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                if not job.cancel.is_set():  # a client that left while waiting costs nothing
                    for event in generate(self.lm, job.prompt_ids, job.params, cancel=job.cancel):
                        job.deliver(event)
            except Exception as bug:  # noqa: BLE001 - a bug must not kill the worker
                log.exception("generation failed")
                job.deliver(Failed(f"internal error: {bug}", "InternalError"))
            finally:
                with self._lock:
                    self._admitted.remove(job)
                job.deliver(None)


# --- request parsing -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    """A validated generation request."""

    prompt_ids: list[int]
    params: SamplingParams
    stream: bool
    include_usage: bool


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float,
            *, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not _is_number(value) or not math.isfinite(value):
        raise ApiError(400, f"{name} must be a number, got {json.dumps(value)}", param=name)
    if value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise ApiError(400, f"{name} must be in {bracket}{low:g}, {high:g}], got {value}",
                       param=name)
    return float(value)


def _optional_int(body: dict[str, Any], name: str, low: int,
                  high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value):
        raise ApiError(400, f"{name} must be an integer, got {json.dumps(value)}", param=name)
    if value < low or (high is not None and value > high):
        limits = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ApiError(400, f"{name} must be {limits}, got {value}", param=name)
    return int(value)


def _boolean(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"{name} must be true or false, got {json.dumps(value)}", param=name)
    return value


def _stop_strings(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ApiError(400, "stop must be a string or a list of strings", param="stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise ApiError(400, f"stop takes at most {MAX_STOP_STRINGS} strings, got {len(stops)}",
                       param="stop")
    if not all(stops):
        raise ApiError(400, "stop strings must not be empty", param="stop")
    return tuple(stops)


def _refuse_unsupported(body: dict[str, Any]) -> None:
    """Reject options we cannot honour; accept the harmless defaults clients send anyway."""
    n = body.get("n")
    if n is not None and n != 1:
        raise ApiError(400, f"n must be 1: this server writes one answer per request, got "
                       f"{json.dumps(n)}", param="n")
    best_of = body.get("best_of")
    if best_of is not None and best_of != 1:
        raise ApiError(400, "best_of must be 1", param="best_of")
    for name in ("presence_penalty", "frequency_penalty"):
        value = body.get(name)
        if value is not None and (not _is_number(value) or value != 0):
            raise ApiError(400, f"{name} is not supported (only 0); use repetition_penalty",
                           param=name)
    for name in ("logprobs", "top_logprobs", "echo", "suffix", "tools", "functions",
                 "logit_bias", "tool_choice", "function_call"):
        value = body.get(name)
        if value not in (None, False, [], {}, "none"):
            raise ApiError(400, f"{name} is not supported by this server", param=name)
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise ApiError(400, "response_format: only {\"type\": \"text\"} is supported",
                       param="response_format")


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content} objects",
                       param="messages")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ApiError(400, f"{where} must be an object", param=where)
        role = message.get("role")
        if role == "developer":  # OpenAI's newer name for the system role
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise ApiError(400, f"{where}.role must be system, user or assistant, got "
                           f"{json.dumps(role)}", param=f"{where}.role")
        content = message.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text"
                       and isinstance(p.get("text"), str) for p in content):
                raise ApiError(400, f"{where}.content: only text parts are supported",
                               param=f"{where}.content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"{where}.content must be a string", param=f"{where}.content")
        out.append({"role": role, "content": content})
    return out


def _completion_prompt(body: dict[str, Any]) -> str | list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
        return [int(t) for t in prompt]
    raise ApiError(400, "prompt must be a string or a list of token ids (one prompt per request)",
                   param="prompt")


# --- the app -------------------------------------------------------------------------------


class _Server:
    """The routes' shared state: the model, the limits and the queue."""

    def __init__(self, lm: LoadedModel, *, model_id: str, api_key: str | None, max_queue: int,
                 max_body_bytes: int, on_request: Callable[[RequestRecord], None] | None) -> None:
        self.lm = lm
        self.model_id = model_id
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.on_request = on_request
        self.queue = GenerationQueue(lm, max_queue)
        self.created = int(time.time())

    # guards

    def check_access(self, request: Request) -> None:
        if self.api_key is None:
            host = _host_name(request.headers.get("host") or "")
            if not _is_loopback(host):
                raise ApiError(403, f"host {host!r} refused: this server has no API key, so it "
                               "answers only requests addressed to localhost",
                               kind="permission_error", code="host_not_allowed")
            return
        header = request.headers.get("authorization") or ""
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "missing API key: send the header 'Authorization: Bearer KEY' "
                           "(the key given to `mixdesk serve --api-key`)",
                           kind="authentication_error", code="invalid_api_key")
        if not hmac.compare_digest(key.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "wrong API key", kind="authentication_error",
                           code="invalid_api_key")

    async def read_json(self, request: Request) -> dict[str, Any]:
        too_large = ApiError(413, f"the request body is over the server's limit of "
                             f"{self.max_body_bytes} bytes", code="request_too_large")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            raise too_large
        chunks = bytearray()
        async for chunk in request.stream():
            chunks += chunk
            if len(chunks) > self.max_body_bytes:
                raise too_large
        try:
            body = json.loads(chunks)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as bad:
            raise ApiError(400, f"the body is not valid JSON ({bad})", code="invalid_json"
                           ) from None
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object", code="invalid_json")
        return body

    def check_model(self, body: dict[str, Any]) -> None:
        model = body.get("model")
        if not isinstance(model, str):
            raise ApiError(400, f"model must be a string; this server has {self.model_id!r}",
                           param="model")
        if model != self.model_id:
            raise ApiError(404, f"model {model!r} does not exist here; this server has "
                           f"{self.model_id!r} (see /v1/models)", param="model",
                           code="model_not_found")

    def parse(self, body: dict[str, Any], *, chat: bool) -> _Request:
        self.check_model(body)
        _refuse_unsupported(body)
        stream = _boolean(body, "stream")
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise ApiError(400, "stream_options must be an object", param="stream_options")
        include_usage = _boolean(options, "include_usage")
        top_k = _optional_int(body, "top_k", -1)  # -1 is vLLM's "off"
        max_tokens = _optional_int(body, "max_tokens", 1)
        if max_tokens is None:
            max_tokens = _optional_int(body, "max_completion_tokens", 1)
        params = SamplingParams(
            temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
            top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
            top_k=max(0, top_k or 0),
            repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.0, 10.0,
                                       low_open=True),
            seed=_optional_int(body, "seed", -(2**63), 2**64 - 1),  # torch's seed range
            stop=_stop_strings(body),
        )
        prompt: Any = _messages(body) if chat else _completion_prompt(body)
        try:
            prompt_ids = encode_prompt(self.lm.tokenizer, prompt, chat)
        except (MixdeskError, TemplateError) as bad:
            raise ApiError(400, f"the prompt cannot be encoded: {bad}",
                           param="messages" if chat else "prompt") from None
        context = self.lm.context
        if not prompt_ids:
            raise ApiError(400, "the prompt is empty", param="prompt")
        if any(not 0 <= t < self.lm.args.vocab_size for t in prompt_ids):
            raise ApiError(400, f"token ids must be in [0, {self.lm.args.vocab_size})",
                           param="prompt")
        if len(prompt_ids) >= context:
            raise ApiError(400, f"the prompt is {len(prompt_ids)} tokens and this model's "
                           f"context holds {context}; shorten it",
                           param="messages" if chat else "prompt",
                           code="context_length_exceeded")
        room = context - len(prompt_ids)
        if max_tokens is not None and max_tokens > room:
            raise ApiError(400, f"max_tokens is {max_tokens}, but the context holds {context} "
                           f"tokens and the prompt takes {len(prompt_ids)}, so at most {room} "
                           "fit", param="max_tokens", code="context_length_exceeded")
        params = replace(params, max_new_tokens=max_tokens or room)
        return _Request(prompt_ids, params, stream, include_usage)

    def admit(self, parsed: _Request) -> _Job:
        job = _Job(parsed.prompt_ids, parsed.params, asyncio.get_running_loop())
        if not self.queue.submit(job):
            raise ApiError(429, f"the server is busy: one request is running and "
                           f"{self.queue.max_waiting} are waiting; retry shortly",
                           kind="rate_limit_error", code="queue_full")
        return job

    def record(self, record: RequestRecord) -> None:
        log.info("%s %s %d %s prompt=%d completion=%d %.2fs", record.method, record.path,
                 record.status, record.finish_reason or "-", record.prompt_tokens,
                 record.completion_tokens, record.seconds)
        if self.on_request is not None:
            try:
                self.on_request(record)
            except Exception:  # noqa: BLE001 - a broken log view must not break serving
                log.exception("on_request callback failed")


def _host_name(header: str) -> str:
    """The host of a Host header: `[::1]:8080` -> `::1`, `localhost:80` -> `localhost`."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _cancel_on_disconnect(request: Request, cancel: threading.Event) -> None:
    """Set `cancel` when the client goes away (the body has been read by then)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    cancel.set()


class _Answer:
    """Builds OpenAI's response objects for one request, chat or completions."""

    def __init__(self, server: _Server, parsed: _Request, chat: bool) -> None:
        self.server = server
        self.parsed = parsed
        self.chat = chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    def usage(self, completion_tokens: int) -> dict[str, int]:
        prompt = len(self.parsed.prompt_ids)
        return {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
                "total_tokens": prompt + completion_tokens}

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created,
                "model": self.server.model_id, "choices": choices}

    def whole(self, done: Done) -> dict[str, Any]:
        finish = FINISH_REASONS.get(done.reason, "stop")
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": done.text}
        else:
            choice["text"] = done.text
        return {**self._envelope(self.object, [choice]),
                "usage": self.usage(len(done.token_ids)),
                "mixdesk": {"token_ids": list(done.token_ids), "finish_reason": done.reason,
                            "ttft_s": done.stats.ttft_s, "prefill_tps": done.stats.prefill_tps,
                            "decode_tps": done.stats.decode_tps}}

    def chunk(self, text: str | None, finish: str | None, extra: dict[str, Any] | None = None,
              *, role: bool = False) -> str:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            choice["delta"] = delta
        else:
            choice["text"] = text or ""
        obj = self._envelope(f"{self.object}.chunk" if self.chat else self.object, [choice])
        if self.parsed.include_usage:
            obj["usage"] = None
        if extra:
            obj["mixdesk"] = extra
        return _sse(obj)

    def usage_chunk(self, completion_tokens: int) -> str:
        obj = self._envelope(f"{self.object}.chunk" if self.chat else self.object, [])
        return _sse({**obj, "usage": self.usage(completion_tokens)})


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _failure(event: Failed) -> ApiError:
    if event.kind == "InternalError":
        return ApiError(500, event.message, kind="server_error")
    if event.kind == "OutOfVRAMError":  # the card, not the request: retry once memory frees
        return ApiError(503, event.message, kind="server_error", code="out_of_memory")
    return ApiError(400, event.message)


SHUTTING_DOWN = ApiError(503, "the server is shutting down", kind="server_error",
                         code="shutting_down")


def create_app(lm: LoadedModel, *, model_id: str, api_key: str | None = None,
               max_queue: int = 8, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               on_request: Callable[[RequestRecord], None] | None = None) -> Starlette:
    """The ASGI app for one loaded model.

    Args:
        lm: the model; the app's worker thread owns it while the app runs.
        model_id: the name clients pass as `model` and see in /v1/models.
        api_key: when set, every /v1 request needs `Authorization: Bearer <api_key>`; when
            None, only requests addressed to a loopback host are answered.
        max_queue: requests that may wait while one runs; one more gets 429.
        max_body_bytes: larger request bodies get 413.
        on_request: called on the event loop with a `RequestRecord` after each request.

    Returns:
        A Starlette app; its lifespan starts and stops the worker thread.
    """
    server = _Server(lm, model_id=model_id, api_key=api_key, max_queue=max_queue,
                     max_body_bytes=max_body_bytes, on_request=on_request)

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok", "busy": server.queue.busy,
                             "waiting": server.queue.waiting})

    async def models(request: Request) -> Response:
        try:
            server.check_access(request)
        except ApiError as refused:
            return refused.response()
        return JSONResponse({"object": "list", "data": [_model_card(server)]})

    async def model(request: Request) -> Response:
        try:
            server.check_access(request)
        except ApiError as refused:
            return refused.response()
        if request.path_params["model"] != model_id:
            return ApiError(404, f"model {request.path_params['model']!r} does not exist here",
                            param="model", code="model_not_found").response()
        return JSONResponse(_model_card(server))

    async def chat_completions(request: Request) -> Response:
        return await _complete(server, request, chat=True)

    async def completions(request: Request) -> Response:
        return await _complete(server, request, chat=False)

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        where = f"{request.method} {request.url.path}"
        if status == 404:
            message = (f"no endpoint {where}; this server has GET /v1/models, POST "
                       "/v1/chat/completions, POST /v1/completions and GET /health")
        elif status == 405:
            message = f"{where} is not allowed; see the method this endpoint takes"
        elif isinstance(exc, HTTPException):
            message = f"{where}: {exc.detail}"
        else:
            log.error("%s failed", where, exc_info=exc)
            message = f"{where}: internal server error ({type(exc).__name__})"
        kind = "not_found_error" if status == 404 else (
            "server_error" if status >= 500 else "invalid_request_error")
        return ApiError(status, message, kind=kind).response()

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        server.queue.start()
        try:
            yield
        finally:
            await asyncio.to_thread(server.queue.stop)

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, Exception: http_error})
    app.state.server = server
    return app


def _model_card(server: _Server) -> dict[str, Any]:
    return {"id": server.model_id, "object": "model", "created": server.created,
            "owned_by": "mixdesk", "max_model_len": server.lm.context}


async def _complete(server: _Server, request: Request, *, chat: bool) -> Response:
    started = time.monotonic()
    path = request.url.path

    def record(status: int, *, stream: bool = False, done: Done | None = None,
               prompt_tokens: int = 0) -> None:
        now = time.monotonic()
        server.record(RequestRecord(
            request.method, path, status, stream, prompt_tokens,
            len(done.token_ids) if done else 0, done.reason if done else "", now - started, now))

    try:
        server.check_access(request)
        parsed = server.parse(await server.read_json(request), chat=chat)
        job = server.admit(parsed)
    except ApiError as refused:
        record(refused.status)
        return refused.response()
    except ClientDisconnect:
        record(499)
        return Response(status_code=400)
    answer = _Answer(server, parsed, chat)
    if parsed.stream:
        return StreamingResponse(_stream(answer, job, request, record), media_type=
                                 "text/event-stream", headers={"Cache-Control": "no-cache",
                                                               "X-Accel-Buffering": "no"})
    return await _whole(answer, job, request, record)


async def _whole(answer: _Answer, job: _Job, request: Request,
                 record: Callable[..., None]) -> Response:
    """The non-streamed answer: wait for Done, then one JSON object."""
    watcher = asyncio.create_task(_cancel_on_disconnect(request, job.cancel))
    prompt_tokens = len(answer.parsed.prompt_ids)
    done: Done | None = None
    try:
        async for event in job.stream():
            if isinstance(event, Failed):
                failure = _failure(event)
                record(failure.status, prompt_tokens=prompt_tokens)
                return failure.response()
            if isinstance(event, Done):
                done = event
        if done is not None and done.reason != "cancelled":
            record(200, done=done, prompt_tokens=prompt_tokens)
            return JSONResponse(answer.whole(done))
        # cancelled: the client left (nobody reads this), or Ctrl+C stopped the server
        record(499 if watcher.done() else 503, done=done, prompt_tokens=prompt_tokens)
        return SHUTTING_DOWN.response()
    finally:
        job.cancel.set()  # no-op once done; frees the worker if this task is cancelled
        watcher.cancel()


async def _stream(answer: _Answer, job: _Job, request: Request,
                  record: Callable[..., None]) -> AsyncIterator[str]:
    """The SSE body: a role chunk, one chunk per token, the finish chunk, usage, [DONE]."""
    watcher = asyncio.create_task(_cancel_on_disconnect(request, job.cancel))
    prompt_tokens = len(answer.parsed.prompt_ids)
    done: Done | None = None
    status = 200
    try:
        yield answer.chunk("", None, {"prompt_tokens": prompt_tokens}, role=True)
        async for event in job.stream():
            if isinstance(event, Token):
                yield answer.chunk(event.text, None, {"token_id": event.id})
            elif isinstance(event, Failed):
                failure = _failure(event)
                status = failure.status
                yield _sse(error_body(failure.message, failure.kind, failure.param,
                                      failure.code))
            elif isinstance(event, Done):
                done = event
                if event.reason == "cancelled":
                    status = 499 if job.cancel.is_set() and watcher.done() else 503
                    yield _sse(error_body(SHUTTING_DOWN.message, SHUTTING_DOWN.kind,
                                          code=SHUTTING_DOWN.code))
                    break
                reason = FINISH_REASONS[event.reason]
                yield answer.chunk(None if answer.chat else "", reason,
                                   {"finish_reason": event.reason,
                                    "token_ids": list(event.token_ids)})
                if answer.parsed.include_usage:
                    yield answer.usage_chunk(len(event.token_ids))
        yield "data: [DONE]\n\n"
    except (asyncio.CancelledError, GeneratorExit):
        status = 499  # the client went away
        raise
    finally:
        job.cancel.set()
        watcher.cancel()
        record(status, stream=True, done=done, prompt_tokens=prompt_tokens)


# --- serve ---------------------------------------------------------------------------------


class _Uvicorn(uvicorn.Server):
    """uvicorn that cancels running generations on Ctrl+C, so shutdown does not wait."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: Any) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)


def _uvicorn(app: Starlette) -> _Uvicorn:
    config = uvicorn.Config(app, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=5)
    return _Uvicorn(config, on_exit=app.state.server.queue.cancel_all)


class BackgroundServer:
    """Serves an app from a daemon thread: the GUI's "Local server" switch, and tests.

    Attributes:
        url: the API root, e.g. http://127.0.0.1:8080/v1.
        port: the bound port (useful with port 0, which picks a free one).
    """

    def __init__(self, app: Starlette, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self._sock = bind_socket(host, port)
        self.port = int(self._sock.getsockname()[1])
        self.url = _url(host, self.port)
        self._server = _uvicorn(app)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="mixdesk-server", daemon=True)

    def start(self, timeout: float = 30.0) -> str:
        """Start serving; returns the URL once the server accepts requests."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ServerConfigError(f"the server at {self.url} did not start")
            time.sleep(0.01)
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel running generations, close connections and end the thread."""
        self.app.state.server.queue.cancel_all()
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to listen beyond this machine without an API key."""
    if api_key is None and not _is_loopback(host):
        raise ServerConfigError(
            f"refusing to serve on {host} without an API key: anyone who can reach this "
            "machine could use it; pass --api-key KEY, or bind --host 127.0.0.1")
    if api_key is not None and not api_key.strip():
        raise ServerConfigError("the API key is empty; pass --api-key with a non-empty value")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket, bound now so a port in use fails before the model loads."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as bad:
        raise ServerConfigError(f"cannot resolve --host {host} ({bad.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as bad:
        sock.close()
        raise ServerConfigError(f"cannot listen on {host}:{port} ({bad.strerror}); is another "
                                "server using that port? Pick another with --port") from None
    sock.setblocking(False)
    return sock


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


def run_server(model_path: str, *, host: str = "127.0.0.1", port: int = 8080,
               api_key: str | None = None, device: str = "auto", dtype: str = "auto",
               context: int | None = None, max_queue: int = 8,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, model_id: str | None = None,
               log_requests: bool = True) -> int:
    """Load a model and serve it until Ctrl+C.

    Args:
        model_path: a model folder, or "demo".
        host: the address to listen on; anything but loopback needs `api_key`.
        port: the TCP port.
        api_key: the key clients must send as a Bearer token.
        device: "auto", "cpu" or "cuda[:n]".
        dtype: "auto", "float32", "bfloat16" or "float16".
        context: the context length (default: min(model maximum, 4096)).
        max_queue: requests that may wait while one runs.
        max_body_bytes: the request body limit.
        model_id: the name clients use (default: the folder's name).
        log_requests: print one line per request.

    Returns:
        The exit code: 0 after a clean Ctrl+C.

    Raises:
        ServerConfigError: an open bind without a key, or the port is in use.
        MixdeskError: the model cannot be loaded.
    """
    from mixdesk.engine.loader import open_model  # noqa: PLC0415

    check_bind(host, api_key)
    if max_queue < 0:
        raise ServerConfigError(f"--max-queue must be >= 0, got {max_queue}")
    sock = bind_socket(host, port)
    try:
        lm = open_model(model_path, device=device, dtype=dtype, context=context)
        name = model_id or lm.path.name
        app = create_app(lm, model_id=name, api_key=api_key, max_queue=max_queue,
                         max_body_bytes=max_body_bytes)
        server = _uvicorn(app)
        if log_requests:
            logging.getLogger("mixdesk.server").setLevel(logging.INFO)
            _ensure_log_handler()
        print(f"mixdesk: serving {name!r} ({lm.device}, context {lm.context}) at "
              f"{_url(host, port)}{' (API key required)' if api_key else ''}; Ctrl+C stops",
              file=sys.stderr, flush=True)
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn re-raises the Ctrl+C it handled
            print("mixdesk: server stopped", file=sys.stderr)
    finally:
        sock.close()
    return 0


def _ensure_log_handler() -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

