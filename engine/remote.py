"""RemoteEngine: an OpenAI-compatible server as the engine, with the same events.

A model too large for one GPU (Mixtral-8x22B w4a16 on vLLM with tensor
parallelism) or another machine's `mixdesk serve` answers through the same
`Stats`, `Token`, `Done` and `Failed` events as the local `engine.generate`,
so the GUI and the CLI need not know where the model runs.

The client is httpx2 (what huggingface_hub and openai already install). No
torch, no Qt, no web server here.

When the server is `mixdesk serve`, each streamed chunk carries a `mixdesk`
field with the token id, so `Token.id` and `Done.token_ids` are exact. Other
servers give text only: `Token.id` is then -1 and `Done.token_ids` is empty.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx2

from mixdesk.engine.errors import (
    InvalidRequestError,
    MixdeskError,
    RemoteAuthError,
    RemoteEngineError,
)
from mixdesk.engine.events import Done, Event, Failed, FinishReason, SamplingParams, Stats, Token

RemotePrompt = str | Sequence[dict[str, str]] | Sequence[int]
UNKNOWN_TOKEN_ID = -1  # a server that streams text only
DNS_FAILURES = ("name or service not known", "nodename nor servname", "getaddrinfo failed",
                "temporary failure in name resolution", "no address associated")
FINISH_REASONS: dict[str, FinishReason] = {"stop": "eos", "length": "length"}


def normalize_base_url(url: str) -> str:
    """`http://host:8000` and `http://host:8000/v1/` both mean `http://host:8000/v1`.

    A URL with another path (`https://host/openai/v1`) is kept as given.
    """
    url = url.strip()
    if not url.startswith(("http://", "https://")):
        raise RemoteEngineError(f"{url!r} is not a server URL; write it like "
                                "http://127.0.0.1:8080/v1")
    try:
        parsed = httpx2.URL(url)
    except httpx2.InvalidURL as bad:
        raise RemoteEngineError(f"{url!r} is not a valid URL ({bad})") from None
    if not parsed.host:
        raise RemoteEngineError(f"{url!r} has no host name")
    path = parsed.path.rstrip("/")
    return str(parsed.copy_with(path=path or "/v1")).rstrip("/")


@dataclass
class _Answer:
    """What a stream has produced so far."""

    started: float
    context_max: int
    prompt_tokens: int = 0
    ids: list[int] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    first_at: float = 0.0
    finish: str | None = None
    exact_reason: str | None = None  # mixdesk serve says eos or stop; OpenAI says "stop" for both
    exact_ids: list[int] | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def stats(self) -> Stats:
        now = time.perf_counter()
        n = len(self.ids)
        prefill_s = self.first_at - self.started
        return Stats(
            prompt_tokens=self.prompt_tokens, generated_tokens=n,
            ttft_s=prefill_s if n else 0.0,
            prefill_tps=self.prompt_tokens / prefill_s if n and prefill_s > 0 else 0.0,
            decode_tps=(n - 1) / (now - self.first_at) if n > 1 else 0.0,
            context_used=self.prompt_tokens + n, context_max=self.context_max)

    def done(self, reason: FinishReason) -> Done:
        ids = self.exact_ids if self.exact_ids is not None else self.ids
        known = tuple(ids) if UNKNOWN_TOKEN_ID not in ids else ()
        return Done(reason, self.text, known, self.stats())


class RemoteEngine:
    """A model served elsewhere over the OpenAI API (mixdesk serve, vLLM, llama.cpp...).

    Attributes:
        base_url: the API root, ending in /v1 unless given otherwise.
        model: the model name sent with each request; the server's first model if None.
        context_max: per model id, the context length the server reports (vLLM and
            mixdesk report `max_model_len`), filled by `models()`.
    """

    def __init__(self, base_url: str, api_key: str | None = None, *, model: str | None = None,
                 connect_timeout: float = 10.0, read_timeout: float = 300.0,
                 transport: httpx2.BaseTransport | None = None) -> None:
        """Args:
            base_url: e.g. http://127.0.0.1:8080/v1 (a bare host:port gets /v1).
            api_key: sent as a Bearer token.
            model: which of the server's models to use; default the first it lists.
            connect_timeout: seconds to wait for a connection.
            read_timeout: seconds to wait for the next bytes: a long prompt's prefill and
                a wait in the server's queue both count.
            transport: an httpx2 transport (tests use a MockTransport).
        """
        self.base_url = normalize_base_url(base_url)
        self.model = model
        self.context_max: dict[str, int] = {}
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._has_key = bool(api_key)
        self._timeouts = (connect_timeout, read_timeout)
        self._client = httpx2.Client(
            base_url=self.base_url + "/", headers=headers, transport=transport,
            timeout=httpx2.Timeout(connect_timeout, read=read_timeout))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RemoteEngine:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def models(self) -> list[str]:
        """The server's model ids, from GET /v1/models.

        Raises:
            RemoteEngineError: the server cannot be reached or is not OpenAI-compatible.
            RemoteAuthError: the server refused the API key.
        """
        try:
            response = self._client.get("models")
        except httpx2.HTTPError as bad:
            raise self._transport_error(bad) from None
        if response.status_code >= 400:
            raise self._status_error(response)
        try:
            data = response.json()["data"]
            ids = [str(card["id"]) for card in data]
        except (ValueError, KeyError, TypeError):
            raise RemoteEngineError(
                f"{self.base_url}/models did not answer with a model list; is this an "
                "OpenAI-compatible server? (its base URL usually ends in /v1)") from None
        for card in data:
            length = card.get("max_model_len")
            if isinstance(length, int):
                self.context_max[str(card["id"])] = length
        return ids

    def generate(self, prompt: RemotePrompt, params: SamplingParams, *, chat: bool = True,
                 cancel: threading.Event | None = None) -> Iterator[Event]:
        """Stream an answer from the server, as `engine.generate` does locally.

        Args:
            prompt: chat messages ({"role", "content"} dicts), plain text or token ids.
            params: sampling settings (top_k and repetition_penalty are sent when not off;
                vLLM and mixdesk accept them, OpenAI's own API does not).
            chat: send plain text as one user message to /chat/completions; False sends
                it to /completions as is.
            cancel: set it to stop; checked as each chunk arrives, and closing the
                connection makes mixdesk serve and vLLM stop generating.

        Yields:
            `Stats` at the first token, a `Token` per streamed chunk, then `Done`; or
            `Failed` whose `kind` names the error class (RemoteEngineError,
            RemoteAuthError, InvalidRequestError) and whose message says what to do.
        """
        answer: _Answer | None = None
        try:
            model = self._model()
            path, body = self._request_body(prompt, params, chat, model)
            answer = _Answer(time.perf_counter(), self.context_max.get(model, 0))
            with self._client.stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._status_error(response)
                yield from self._read_stream(response, answer, chat, cancel)
        except httpx2.HTTPError as bad:
            error: MixdeskError = self._transport_error(bad)
        except MixdeskError as bad:
            error = bad
        else:
            return
        yield Failed(str(error), type(error).__name__, answer.text if answer else "",
                     tuple(answer.ids) if answer else ())

    # --- internals ---------------------------------------------------------------------

    def _model(self) -> str:
        if self.model is None:
            ids = self.models()
            if not ids:
                raise RemoteEngineError(f"{self.base_url} serves no models")
            self.model = ids[0]
        elif self.model not in self.context_max:
            self.models()  # learn the context length; also checks the server early
        return self.model

    def _request_body(self, prompt: RemotePrompt, params: SamplingParams, chat: bool,
                      model: str) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": model, "stream": True, "stream_options": {"include_usage": True},
            "temperature": params.temperature, "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        if params.top_k > 0:
            body["top_k"] = params.top_k
        if params.repetition_penalty != 1.0:
            body["repetition_penalty"] = params.repetition_penalty
        if isinstance(prompt, str):
            if chat:
                return "chat/completions", {**body, "messages": [
                    {"role": "user", "content": prompt}]}
            return "completions", {**body, "prompt": prompt}
        items = list(prompt)
        if items and all(isinstance(m, dict) for m in items):
            return "chat/completions", {**body, "messages": items}
        if items and all(isinstance(t, int) for t in items):
            return "completions", {**body, "prompt": items}
        raise InvalidRequestError("the prompt must be text, chat messages or token ids")

    def _read_stream(self, response: httpx2.Response, answer: _Answer, chat: bool,
                     cancel: threading.Event | None) -> Iterator[Event]:
        for data in _sse_data(response.iter_lines()):
            if cancel is not None and cancel.is_set():
                break  # leaving the `with` closes the connection; the server stops
            if data.strip() == "[DONE]":
                break
            try:
                chunk = json.loads(data)
            except json.JSONDecodeError:
                raise RemoteEngineError(f"{self.base_url} sent a stream that is not JSON "
                                        f"({data[:80]!r}); is it OpenAI-compatible?") from None
            if not isinstance(chunk, dict):
                continue
            if isinstance(chunk.get("error"), dict):
                raise _server_error(chunk["error"], self.base_url)
            yield from _chunk_events(chunk, answer, chat)
        if cancel is not None and cancel.is_set():
            yield answer.done("cancelled")
            return
        if answer.finish is None:
            raise RemoteEngineError(f"{self.base_url} closed the stream before the answer "
                                    "finished; try again")
        reason = FINISH_REASONS.get(answer.finish, "eos")  # OpenAI's "stop" is ours "eos"...
        if answer.exact_reason in ("eos", "stop", "length"):  # ...unless mixdesk says more
            reason = answer.exact_reason  # type: ignore[assignment]
        yield answer.done(reason)

    def _status_error(self, response: httpx2.Response) -> MixdeskError:
        status = response.status_code
        try:
            detail = response.json().get("error") or {}
            message = str(detail.get("message") if isinstance(detail, dict) else detail)
        except (ValueError, AttributeError):
            detail, message = {}, response.text[:200].strip()
        if status in (401, 403):
            hint = ("check the API key in the server settings" if self._has_key
                    else "this server needs an API key: add it in the server settings")
            return RemoteAuthError(f"{self.base_url} refused the request ({status}: "
                                   f"{message or 'unauthorized'}); {hint}")
        if status == 404 and isinstance(detail, dict) and detail.get("code") == "model_not_found":
            return RemoteEngineError(f"{message}")
        if status == 404:
            return RemoteEngineError(f"{response.request.url} does not exist (404); is "
                                     f"{self.base_url} the API root? It usually ends in /v1")
        if status == 429:
            return RemoteEngineError(f"the server is busy (429: {message}); try again shortly")
        if 400 <= status < 500:
            return InvalidRequestError(f"the server refused the request ({status}): {message}")
        return RemoteEngineError(f"the server failed ({status}): {message or 'no details'}")

    def _transport_error(self, error: httpx2.HTTPError) -> RemoteEngineError:
        host = httpx2.URL(self.base_url).host
        connect_s, read_s = self._timeouts
        text = str(error)
        if isinstance(error, httpx2.ConnectTimeout):
            return RemoteEngineError(f"{host} did not accept a connection within {connect_s:g} "
                                     "s; check the URL, the network, and that the server runs")
        if isinstance(error, httpx2.TimeoutException):
            return RemoteEngineError(f"{self.base_url} sent nothing for {read_s:g} s; the "
                                     "server may be overloaded or stuck; try again")
        if isinstance(error, httpx2.ConnectError):
            if any(words in text.lower() for words in DNS_FAILURES):
                return RemoteEngineError(f"cannot find the host {host!r} (DNS); check the "
                                         "server URL")
            return RemoteEngineError(f"cannot connect to {self.base_url} ({text}); is the "
                                     "server running and the URL right? Start a local one "
                                     "with `mixdesk serve MODEL`")
        reason = text or type(error).__name__
        return RemoteEngineError(f"the connection to {self.base_url} failed ({reason}); "
                                 "try again")


def _sse_data(lines: Iterator[str]) -> Iterator[str]:
    """The `data` of each server-sent event (comments and other fields skipped)."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        yield "\n".join(data)


def _chunk_events(chunk: dict[str, Any], answer: _Answer, chat: bool) -> Iterator[Event]:
    """Events for one streamed chunk, updating `answer`."""
    raw_ext = chunk.get("mixdesk")
    ext: dict[str, Any] = raw_ext if isinstance(raw_ext, dict) else {}
    usage = chunk.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
        answer.prompt_tokens = usage["prompt_tokens"]
    if isinstance(ext.get("prompt_tokens"), int):
        answer.prompt_tokens = ext["prompt_tokens"]
    for choice in chunk.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        if chat:
            delta = choice.get("delta") or {}
            text = delta.get("content") if isinstance(delta, dict) else None
        else:
            text = choice.get("text")
        token_id = ext.get("token_id")
        if isinstance(token_id, int) or text:  # a token (mixdesk sends ids even for "")
            if not answer.ids:
                answer.first_at = time.perf_counter()
                yield answer.stats()
            answer.ids.append(token_id if isinstance(token_id, int) else UNKNOWN_TOKEN_ID)
            answer.parts.append(text or "")
            yield Token(answer.ids[-1], text or "", answer.stats())
        if choice.get("finish_reason"):
            answer.finish = str(choice["finish_reason"])
            if isinstance(ext.get("finish_reason"), str):
                answer.exact_reason = ext["finish_reason"]
            if isinstance(ext.get("token_ids"), list):
                answer.exact_ids = [int(t) for t in ext["token_ids"]]


def _server_error(error: dict[str, Any], base_url: str) -> MixdeskError:
    message = str(error.get("message") or "no details")
    if error.get("type") == "invalid_request_error":
        return InvalidRequestError(f"the server refused the request: {message}")
    return RemoteEngineError(f"{base_url} failed mid-answer: {message}")
