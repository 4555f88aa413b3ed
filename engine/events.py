"""What `engine.generate` yields. The GUI, the CLI and the server consume these.

Kept free of torch so front ends can import them cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["eos", "stop", "length", "cancelled"]


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token.

    temperature 0 is greedy. top_k 0 and top_p 1.0 turn those filters off;
    repetition_penalty 1.0 is off.
    """

    temperature: float = 0.7
    top_k: int = 40
    top_p: float = 0.95
    repetition_penalty: float = 1.0
    max_new_tokens: int = 512
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stats:
    """Timing and context use, as of the event that carries it."""

    prompt_tokens: int
    generated_tokens: int
    ttft_s: float  # request start to first token out
    prefill_tps: float  # prompt tokens / prefill seconds
    decode_tps: float  # tokens after the first / their seconds
    context_used: int
    context_max: int


@dataclass(frozen=True)
class Token:
    """One sampled token and the text it completed (may be "" mid-character)."""

    id: int
    text: str
    stats: Stats


@dataclass(frozen=True)
class Done:
    """Generation ended; `text` is the whole answer (stop string removed)."""

    reason: FinishReason
    text: str
    token_ids: tuple[int, ...]
    stats: Stats


@dataclass(frozen=True)
class Failed:
    """Generation failed with a user-facing error; `message` is one actionable sentence."""

    message: str
    kind: str = "MixdeskError"
    partial_text: str = ""
    token_ids: tuple[int, ...] = field(default=())


Event = Token | Stats | Done | Failed
