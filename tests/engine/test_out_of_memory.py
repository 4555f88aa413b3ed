"""The GPU runs out of memory mid-answer: a typed error, the text so far kept, nothing
crashes, and the next request works once the memory is back (issue 5).

Without a GPU the accounting is simulated. `VramLedger` holds a budget, the model's
resident bytes, the bytes one step needs, and what other programs hold; a step that
would pass the budget raises `torch.OutOfMemoryError`, the exception CUDA's caching
allocator raises. The GPU test (`-m gpu`) takes the memory for real.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from mixdesk.engine.events import Done, Failed, SamplingParams, Token
from mixdesk.engine.generate import generate
from mixdesk.engine.loader import LoadedModel, load_model

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=12)
PROMPT = "The sea"


@dataclass
class VramLedger:
    """Budget accounting for a model on a simulated card.

    Attributes:
        budget: bytes the card (or the budget) allows.
        resident: bytes the model holds for good (weights, KV cache).
        step: bytes one forward step allocates and frees.
        others: bytes other programs hold right now.
    """

    budget: int
    resident: int
    step: int
    others: int = 0
    refused: list[int] = field(default_factory=list)

    def before_step(self, _module: torch.nn.Module, _args: Any) -> None:
        free = self.budget - self.resident - self.others
        if self.step > free:
            self.refused.append(self.step)
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {self.step} bytes "
                f"({max(free, 0)} bytes free; simulated)")


def _resident_bytes(lm: LoadedModel) -> int:
    return sum(t.numel() * t.element_size()
               for t in [*lm.model.parameters(), *lm.model.buffers()])


@pytest.fixture
def simulated(tiny_mixtral: Path) -> Iterator[tuple[LoadedModel, VramLedger]]:
    lm = load_model(tiny_mixtral, context=64)
    resident = _resident_bytes(lm)
    ledger = VramLedger(budget=resident + 3 * 2**20, resident=resident, step=2**20)
    handle = lm.model.register_forward_pre_hook(ledger.before_step)
    yield lm, ledger
    handle.remove()


def _clean_answer(lm: LoadedModel) -> Done:
    done = list(generate(lm, PROMPT, GREEDY))[-1]
    assert isinstance(done, Done) and done.reason == "length"
    return done


def _answer_with_a_thief(lm: LoadedModel, take: Any, after_tokens: int) -> list[object]:
    """Generate; once `after_tokens` tokens are out, another program takes the memory."""
    events: list[object] = []
    for event in generate(lm, PROMPT, GREEDY):
        events.append(event)
        if sum(isinstance(e, Token) for e in events) == after_tokens:
            take()
    return events


def test_memory_taken_mid_answer_fails_typed_and_keeps_the_text(
        simulated: tuple[LoadedModel, VramLedger]) -> None:
    lm, ledger = simulated
    clean = _clean_answer(lm)

    def take() -> None:
        ledger.others = ledger.budget  # a second allocation fills the card

    events = _answer_with_a_thief(lm, take, after_tokens=3)
    failed = events[-1]
    assert isinstance(failed, Failed), events[-1]
    assert failed.kind == "OutOfVRAMError"
    assert "ran out of memory after 3 tokens" in failed.message
    assert "close other GPU programs" in failed.message
    assert "Traceback" not in failed.message and "\n" not in failed.message
    assert failed.token_ids == clean.token_ids[:3]
    assert failed.partial_text == "".join(e.text for e in events if isinstance(e, Token))
    assert clean.text.startswith(failed.partial_text)
    assert ledger.refused == [ledger.step]

    ledger.others = 0  # the other program exits
    again = _clean_answer(lm)
    assert (again.text, again.token_ids) == (clean.text, clean.token_ids)


def test_a_prompt_that_does_not_fit_fails_before_any_token(
        simulated: tuple[LoadedModel, VramLedger]) -> None:
    lm, ledger = simulated
    ledger.others = ledger.budget - ledger.resident  # no room for even the prefill
    events = list(generate(lm, PROMPT, GREEDY))
    assert len(events) == 1 and isinstance(events[0], Failed)
    assert events[0].kind == "OutOfVRAMError" and events[0].token_ids == ()
    assert "after 0 tokens" in events[0].message


def test_other_errors_are_not_mistaken_for_out_of_memory(
        simulated: tuple[LoadedModel, VramLedger]) -> None:
    lm, _ = simulated

    def broken(_module: torch.nn.Module, _args: Any) -> None:
        raise RuntimeError("a bug, not the card")

    handle = lm.model.register_forward_pre_hook(broken)
    try:
        with pytest.raises(RuntimeError, match="a bug"):
            list(generate(lm, PROMPT, GREEDY))
    finally:
        handle.remove()


def test_server_answers_503_and_serves_the_next_request(
        simulated: tuple[LoadedModel, VramLedger]) -> None:
    """Over real HTTP with the openai client: the OOM is a 503 in OpenAI's error shape."""
    openai = pytest.importorskip("openai")  # the GPU machine runs this file without it
    from mixdesk.app.server import BackgroundServer, create_app  # noqa: PLC0415

    lm, ledger = simulated
    clean = _clean_answer(lm)
    app = create_app(lm, model_id="tiny")
    with BackgroundServer(app) as server:
        client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
        ledger.others = ledger.budget
        with pytest.raises(openai.InternalServerError) as refused:
            client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12,
                                      temperature=0)
        assert refused.value.status_code == 503
        body = refused.value.response.json()["error"]
        assert body["type"] == "server_error" and body["code"] == "out_of_memory"
        assert "ran out of memory" in body["message"]
        ledger.others = 0
        answer = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12,
                                           temperature=0)
        assert answer.choices[0].text == clean.text


@pytest.mark.gpu
def test_gpu_memory_taken_mid_answer(tiny_mixtral: Path) -> None:
    """For real: after 3 tokens a second allocation takes all free VRAM."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    lm = load_model(tiny_mixtral, device="cuda", context=64)
    clean = _clean_answer(lm)
    hog: list[torch.Tensor] = []

    def take() -> None:
        torch.cuda.empty_cache()  # our cached blocks go back, so the next step must ask
        for size in (2**k for k in range(40, 8, -1)):  # biggest first, down to 512 bytes
            while True:
                try:
                    hog.append(torch.empty(size, dtype=torch.uint8, device="cuda"))
                except torch.OutOfMemoryError:
                    break

    events = _answer_with_a_thief(lm, take, after_tokens=3)
    failed = events[-1]
    assert isinstance(failed, Failed), events[-1]
    assert failed.kind == "OutOfVRAMError" and failed.token_ids == clean.token_ids[:3]
    hog.clear()
    torch.cuda.empty_cache()
    again = _clean_answer(lm)
    assert again.token_ids == clean.token_ids
