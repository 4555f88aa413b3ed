"""Generation as a generator of events: prefill, then one token at a time.

The GUI, the CLI and the server all consume `generate`. Sampling follows
gpt-fast: logits are filtered on the device and drawn by the exponential trick,
so the only host round trip per token is reading the id for detokenization. On
CUDA with the kernel path, each decode step is one CUDA-graph replay
(`engine.fastpath.decode_graph`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from jinja2.exceptions import TemplateError
from torch import Tensor

from mixdesk.engine.errors import (
    ContextOverflowError,
    InvalidRequestError,
    MixdeskError,
    OutOfVRAMError,
    TokenizerError,
)
from mixdesk.engine.events import Done, Event, Failed, FinishReason, SamplingParams, Stats, Token
from mixdesk.engine.fastpath import DecodeGraph, decode_graph
from mixdesk.engine.loader import LoadedModel

Prompt = str | Sequence[dict[str, str]] | Sequence[int]


def validate_params(params: SamplingParams) -> None:
    """Raise InvalidRequestError naming the first value out of range."""
    checks = [
        (params.temperature >= 0, f"temperature must be >= 0, got {params.temperature}"),
        (params.top_k >= 0, f"top_k must be >= 0 (0 is off), got {params.top_k}"),
        (0 < params.top_p <= 1, f"top_p must be in (0, 1], got {params.top_p}"),
        (params.repetition_penalty > 0,
         f"repetition_penalty must be > 0 (1 is off), got {params.repetition_penalty}"),
        (params.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {params.max_new_tokens}"),
        (all(params.stop), "stop strings must not be empty"),
    ]
    for ok, message in checks:
        if not ok:
            raise InvalidRequestError(message)


def encode_prompt(tokenizer: Any, prompt: Prompt, chat: bool) -> list[int]:
    """Token ids for a prompt: raw text, chat messages (via the chat template), or ids."""
    if isinstance(prompt, str) and not chat:
        return list(tokenizer.encode(prompt))
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if prompt and isinstance(prompt[0], dict):
        if not getattr(tokenizer, "chat_template", None):
            raise TokenizerError("this model's tokenizer has no chat template; send plain text")
        text = render_chat(tokenizer, list(prompt))  # type: ignore[arg-type]
        return list(tokenizer.encode(text, add_special_tokens=False))
    return [int(t) for t in prompt]  # type: ignore[arg-type]


def render_chat(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The chat template applied to messages, ready for the assistant's turn.

    Some templates (Mixtral's, Mistral v0.1's) refuse a system message; then
    the system prompt goes in front of the first user turn, as those models'
    authors suggest.
    """
    try:
        return str(tokenizer.apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=True))
    except TemplateError as refused:
        if len(messages) > 1 and messages[0]["role"] == "system" \
                and messages[1]["role"] == "user":
            system, first, *rest = messages
            merged = {"role": "user", "content": f"{system['content']}\n\n{first['content']}"}
            return render_chat(tokenizer, [merged, *rest])
        raise InvalidRequestError(
            f"the model's chat template refuses this conversation: {refused}") from None


class StreamingDetokenizer:
    """Turns ids into text deltas that are always whole characters.

    It decodes a short window of recent ids and holds text back while the
    window ends in an incomplete UTF-8 sequence (the replacement character).
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # start of the decode window
        self.read = 0  # end of the text already returned

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""


def sample(logits: Tensor, params: SamplingParams, history: Tensor,
           generator: torch.Generator | None) -> Tensor:
    """Next token id [1] from logits [V], on the logits' device, with no host sync.

    Args:
        logits: last position's logits.
        params: sampling settings.
        history: ids seen so far (prompt and answer), for the repetition penalty.
        generator: seeded RNG, or None for the global one.
    """
    logits = logits.float()
    if params.repetition_penalty != 1.0 and history.numel():
        seen = logits[history]
        logits = logits.scatter(0, history, torch.where(
            seen > 0, seen / params.repetition_penalty, seen * params.repetition_penalty))
    if params.temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits / params.temperature
    if params.top_k > 0:
        kth = torch.topk(logits, min(params.top_k, logits.numel())).values[-1]
        logits = torch.where(logits < kth, float("-inf"), logits)
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # drop a token when the mass before it already reaches top_p; the first always stays
        drop = (sorted_probs.cumsum(-1) - sorted_probs) >= params.top_p
        probs = probs.scatter(0, order, sorted_probs.masked_fill(drop, 0.0))
    noise = torch.empty_like(probs).exponential_(1, generator=generator)
    return (probs / noise).argmax(-1, keepdim=True)


def _take_next(logits: Tensor, params: SamplingParams, history: Tensor,
               generator: torch.Generator | None, replayed: DecodeGraph | None, *,
               readback: TokenReadback) -> tuple[Tensor, Tensor]:
    """The next id with its readback started, and the history with it where a later step
    reads the history (the eager step, the repetition penalty): else none is appended, one
    launch fewer between two replays.

    Greedy and unpenalised after a replay of `replayed` (whose logits these are), the id is
    the argmax that replay wrote into the buffer the next one reads, and into pinned host
    memory, where the readback takes it: no launch, no copy. Else `sample`."""
    greedy = written = None
    if replayed is not None and params.temperature == 0 and params.repetition_penalty == 1.0:
        greedy, written = replayed.greedy_token(), replayed.greedy_written()
    next_id = greedy if greedy is not None else sample(logits, params, history, generator)
    if replayed is None or params.repetition_penalty != 1.0:
        history = torch.cat([history, next_id])
    readback.start(next_id, written=written)  # None with greedy: both need a replay
    return next_id, history


class TokenReadback:
    """One id read back to the host behind only the work queued before it.

    `start` copies the id into pinned host memory on the stream and records an event;
    `result` waits for that event. So a decode step queued between the two runs while the
    host waits: `.item()` at that point would wait for that step too, and the GPU would
    idle while the host sampled and queued the step after it. An id that a decode graph
    wrote into pinned host memory itself (`DecodeGraph.greedy_written`) needs no copy: only
    the event. On the CPU the copy is plain.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.host = torch.zeros(1, dtype=torch.long, pin_memory=self.cuda)
        self.copied = torch.cuda.Event() if self.cuda else None
        self.slot = (self.host, 0)  # where `result` reads the id

    def start(self, token: Tensor, written: tuple[Tensor, int] | None = None) -> None:
        """Queue the copy of `token` (one id on the device); with `written`, (pinned host
        tensor, index) where the work queued before already writes it, no copy."""
        if written is not None and self.copied is not None:
            self.slot = written
        else:
            self.slot = (self.host, 0)
            self.host.copy_(token.reshape(1), non_blocking=self.cuda)
        if self.copied is not None:  # on the stream the copy went to (cuda:1 is not current)
            self.copied.record(torch.cuda.current_stream(token.device))

    def result(self) -> int:
        """The id of the last `start`, once its copy landed."""
        if self.copied is not None:
            self.copied.synchronize()
        host, index = self.slot
        return int(host[index])


class _AnswerText:
    """The answer's text as it grows, cut at the first stop string.

    Text that could be the start of a stop string is held back until the next
    token shows it is not, so a stop string never reaches the user.
    """

    def __init__(self, tokenizer: Any, stops: tuple[str, ...]) -> None:
        self.detok = StreamingDetokenizer(tokenizer)
        self.stops = stops
        self.text = ""
        self.shown = 0  # characters of text already handed out
        self.stopped = False

    def _held_back(self) -> int:
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.text)), longest, -1):
                if self.text.endswith(stop[:n]):
                    longest = n
                    break
        return longest

    def push(self, token_id: int, last: bool) -> str:
        """Add a token; return the new text that is safe to show."""
        self.text += self.detok.add(token_id)
        cut = min((i for i in (self.text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.stopped = self.text[:cut], True
        safe = len(self.text) if last or self.stopped else len(self.text) - self._held_back()
        delta = self.text[self.shown:safe]
        self.shown = max(self.shown, safe)
        return delta

    def flush(self) -> str:
        delta = self.text[self.shown:]
        self.shown = len(self.text)
        return delta


def generate(lm: LoadedModel, prompt: Prompt, params: SamplingParams, *, chat: bool = False,
             cancel: threading.Event | None = None) -> Iterator[Event]:
    """Stream an answer.

    Args:
        lm: the loaded model.
        prompt: plain text, chat messages ({"role", "content"} dicts) or token ids.
        params: sampling settings.
        chat: apply the tokenizer's chat template to a plain-text prompt.
        cancel: set it to stop; checked before every token.

    Yields:
        `Stats` once the prompt is read, a `Token` per sampled token, then `Done`,
        or `Failed` for a user-facing error (bad parameters, prompt too long).
        The `Token` texts joined equal `Done.text`.
    """
    try:
        validate_params(params)
        prompt_ids = encode_prompt(lm.tokenizer, prompt, chat)
        if not prompt_ids:
            raise InvalidRequestError("the prompt is empty")
        if len(prompt_ids) >= lm.context:
            raise ContextOverflowError(
                f"the prompt is {len(prompt_ids)} tokens and the context holds {lm.context}; "
                "shorten it or load the model with a longer context")
    except MixdeskError as error:
        yield Failed(str(error), type(error).__name__)
        return
    yield from _out_of_memory_guard(_decode_loop(lm, prompt_ids, params, cancel), lm.device)


OUT_OF_MEMORY = ("the GPU ran out of memory after {n} tokens (another program took VRAM, "
                 "or the budget leaves too little room): close other GPU programs or load the "
                 "model with a smaller context; the answer so far is kept")


def _out_of_memory_guard(events: Iterator[Event], device: torch.device) -> Iterator[Event]:
    """Pass events through; a device out-of-memory error mid-answer becomes `Failed`.

    The partial answer travels in the event. The model's state stays usable: the
    KV cache is static and the next request rewrites the positions it reads, so
    once the memory is back the next request runs as if nothing had happened.
    """
    texts: list[str] = []
    ids: list[int] = []
    try:
        for event in events:
            if isinstance(event, Token):
                texts.append(event.text)
                ids.append(event.id)
            yield event
        return
    except torch.OutOfMemoryError:
        pass  # leave the except block first, so the failed step's tensors are freed
    if device.type == "cuda":
        torch.cuda.empty_cache()  # hand the failed step's cached blocks back
    yield Failed(OUT_OF_MEMORY.format(n=len(ids)), OutOfVRAMError.__name__, "".join(texts),
                 tuple(ids))


@torch.inference_mode()
def _decode_loop(lm: LoadedModel, prompt_ids: list[int], params: SamplingParams,
                 cancel: threading.Event | None) -> Iterator[Event]:
    start = time.perf_counter()
    device = lm.device
    generator = None
    if params.seed is not None:
        generator = torch.Generator(device=device).manual_seed(params.seed)
    eos = set(lm.args.eos_token_ids)
    if getattr(lm.tokenizer, "eos_token_id", None) is not None:
        eos.add(int(lm.tokenizer.eos_token_id))
    n_prompt = len(prompt_ids)
    budget = min(params.max_new_tokens, lm.context - n_prompt)
    history = torch.tensor(prompt_ids, device=device)  # grows by one id per token
    answer = _AnswerText(lm.tokenizer, params.stop)
    ids: list[int] = []
    first_at = 0.0

    def stats() -> Stats:
        now = time.perf_counter()
        prefill_s = first_at - start
        return Stats(
            prompt_tokens=n_prompt, generated_tokens=len(ids),
            ttft_s=prefill_s if ids else 0.0,
            prefill_tps=n_prompt / prefill_s if ids and prefill_s > 0 else 0.0,
            decode_tps=(len(ids) - 1) / (now - first_at) if len(ids) > 1 else 0.0,
            context_used=n_prompt + len(ids), context_max=lm.context)

    logits = lm.model(history[None], torch.arange(n_prompt, device=device))[0, -1]  # [V]
    graph = decode_graph(lm.model) if device.type == "cuda" else None  # engine.fastpath
    reason: FinishReason = "length"
    queued: torch.Tensor | None = None  # logits of the next step, already on the GPU's queue
    readback = TokenReadback(device)
    while len(ids) < budget:
        if cancel is not None and cancel.is_set():
            reason = "cancelled"
            break
        if queued is not None:
            logits = queued
        elif ids:
            pos = torch.tensor([n_prompt + len(ids) - 1], device=device)
            logits = lm.model(history[-1:][None], pos)[0, -1]
        next_id, history = _take_next(logits, params, history, generator,
                                      graph if queued is not None else None,
                                      readback=readback)
        # the next step (one CUDA-graph replay, no host sync) goes on the queue before this
        # token is read back, and the read waits for the copy queued before it, not for that
        # step: the GPU does not wait for the host between steps. After an end it is one
        # step unused.
        queued = (graph.step(lm.model, next_id, n_prompt + len(ids))
                  if graph is not None and len(ids) + 1 < budget else None)
        token = readback.result()
        if not ids:
            first_at = time.perf_counter()
            yield stats()
        ids.append(token)
        if token in eos:  # show what was held back for a stop string
            yield Token(token, answer.flush(), stats())
            reason = "eos"
            break
        yield Token(token, answer.push(token, last=len(ids) == budget), stats())
        if answer.stopped:
            reason = "stop"
            break
    # on cancel the answer is what was shown; held-back text never was
    text = answer.text[:answer.shown] if reason == "cancelled" else answer.text
    yield Done(reason, text, tuple(ids), stats())
