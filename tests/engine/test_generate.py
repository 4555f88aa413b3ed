"""Generation: sampling, streaming text, stop strings, cancel, events, bad requests."""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import pytest
import torch

from mixdesk.engine.errors import InvalidRequestError
from mixdesk.engine.events import Done, Failed, SamplingParams, Stats, Token
from mixdesk.engine.generate import (
    StreamingDetokenizer,
    TokenReadback,
    encode_prompt,
    generate,
    sample,
    validate_params,
)
from mixdesk.engine.loader import LoadedModel, load_model

GREEDY = SamplingParams(temperature=0, max_new_tokens=24)


@pytest.fixture(scope="module")
def tiny(tiny_mixtral: Path) -> LoadedModel:
    return load_model(tiny_mixtral, context=128)


def _run(lm: LoadedModel, prompt: str, params: SamplingParams, **kw: object) -> list[object]:
    return list(generate(lm, prompt, params, **kw))  # type: ignore[arg-type]


def test_sample_greedy_is_argmax() -> None:
    logits = torch.randn(500)
    assert sample(logits, GREEDY, torch.tensor([], dtype=torch.long), None).item() == \
        logits.argmax().item()


def test_sample_draws_from_softmax() -> None:
    logits = torch.randn(6) * 2
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0)
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    draws = torch.stack([sample(logits, params, torch.tensor([], dtype=torch.long), gen)
                         for _ in range(6000)]).flatten()
    freq = torch.bincount(draws, minlength=6).float() / len(draws)
    # 6000 draws: the standard error of each frequency is below 0.0065
    assert (freq - torch.softmax(logits, -1)).abs().max() < 0.03


def test_sample_top_k_and_top_p_never_leave_the_nucleus() -> None:
    logits = torch.tensor([5.0, 4.0, 1.0, 0.5, 0.0, -1.0])
    empty = torch.tensor([], dtype=torch.long)
    gen = torch.Generator().manual_seed(1)
    top2 = {int(sample(logits, SamplingParams(temperature=2.0, top_k=2, top_p=1.0), empty, gen))
            for _ in range(300)}
    assert top2 == {0, 1}
    # p(0) is about 0.71, so top_p 0.5 keeps token 0 alone
    nucleus = {int(sample(logits, SamplingParams(temperature=1.0, top_k=0, top_p=0.5), empty,
                          gen)) for _ in range(100)}
    assert nucleus == {0}


def test_repetition_penalty_pushes_seen_tokens_down() -> None:
    logits = torch.tensor([3.0, 2.9, -1.0])
    seen = torch.tensor([0])
    assert sample(logits, SamplingParams(temperature=0, repetition_penalty=1.3), seen,
                  None).item() == 1
    assert sample(logits, SamplingParams(temperature=0, repetition_penalty=1.0), seen,
                  None).item() == 0


@pytest.mark.parametrize("bad", [
    {"temperature": -0.1}, {"top_k": -1}, {"top_p": 0.0}, {"top_p": 1.5},
    {"repetition_penalty": 0.0}, {"max_new_tokens": 0}, {"stop": ("",)},
])
def test_validate_params_rejects_out_of_range(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidRequestError, match=next(iter(bad))):
        validate_params(SamplingParams(**bad))  # type: ignore[arg-type]


def test_detokenizer_streams_whole_characters(tiny: LoadedModel) -> None:
    text = "naïve café — 東京 🎉🚀 done"
    ids = tiny.tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > len(text.split()), "the tokenizer must split multi-byte characters"
    detok = StreamingDetokenizer(tiny.tokenizer)
    deltas = [detok.add(i) for i in ids]
    assert "".join(deltas) == tiny.tokenizer.decode(ids)
    assert not any("\ufffd" in d for d in deltas)
    assert "" in deltas, "some token ended mid-character and had to be held back"


def test_events_come_in_order_with_consistent_stats(tiny: LoadedModel) -> None:
    events = _run(tiny, "hello there", GREEDY)
    assert isinstance(events[0], Stats)
    assert isinstance(events[-1], Done)
    tokens = [e for e in events if isinstance(e, Token)]
    done = events[-1]
    assert tuple(t.id for t in tokens) == done.token_ids
    assert "".join(t.text for t in tokens) == done.text
    n_prompt = len(tiny.tokenizer.encode("hello there"))
    assert done.stats.prompt_tokens == n_prompt
    assert done.stats.context_used == n_prompt + len(done.token_ids)
    assert done.stats.context_max == 128
    assert done.stats.ttft_s > 0 and done.stats.prefill_tps > 0
    if len(tokens) > 1:
        assert done.stats.decode_tps > 0
    assert done.reason in ("eos", "length")


def test_seed_makes_sampling_reproducible(tiny: LoadedModel) -> None:
    params = SamplingParams(temperature=1.5, top_k=0, top_p=1.0, max_new_tokens=20, seed=7)
    first, second = (_run(tiny, "once upon", params)[-1] for _ in range(2))
    other = _run(tiny, "once upon", SamplingParams(temperature=1.5, top_k=0, top_p=1.0,
                                                   max_new_tokens=20, seed=8))[-1]
    assert isinstance(first, Done) and isinstance(second, Done) and isinstance(other, Done)
    assert first.token_ids == second.token_ids
    assert first.token_ids != other.token_ids


def test_stop_string_cuts_the_answer_and_never_streams(tiny: LoadedModel) -> None:
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=40, seed=3)
    full = _run(tiny, "the", params)[-1]
    assert isinstance(full, Done) and len(full.text) > 12
    stop = full.text[6:9]
    events = _run(tiny, "the", SamplingParams(**{**params.__dict__, "stop": (stop,)}))
    done = events[-1]
    assert isinstance(done, Done)
    assert done.reason == "stop"
    assert done.text == full.text[:full.text.find(stop)]
    streamed = "".join(e.text for e in events if isinstance(e, Token))
    assert streamed == done.text and stop not in streamed


def test_cancel_stops_within_one_token(tiny: LoadedModel) -> None:
    cancel = threading.Event()
    tokens = 0
    done = None
    params = SamplingParams(temperature=1.0, top_k=0, max_new_tokens=100, seed=1)
    for event in generate(tiny, "go", params, cancel=cancel):
        if isinstance(event, Token):
            tokens += 1
            if tokens == 3:
                cancel.set()
        done = event
    assert isinstance(done, Done)
    assert done.reason == "cancelled"
    assert len(done.token_ids) == 3


def test_max_new_tokens_ends_with_length(tiny: LoadedModel) -> None:
    params = SamplingParams(temperature=1.0, top_k=0, max_new_tokens=5, seed=2)
    done = _run(tiny, "count", params)[-1]
    assert isinstance(done, Done)
    assert done.reason == "length" or done.token_ids[-1] in tiny.args.eos_token_ids
    assert len(done.token_ids) <= 5


def test_prompt_longer_than_context_fails_cleanly(tiny: LoadedModel) -> None:
    events = _run(tiny, "word " * 400, GREEDY)
    assert len(events) == 1 and isinstance(events[0], Failed)
    assert events[0].kind == "ContextOverflowError"
    assert "context holds 128" in events[0].message


def test_bad_params_fail_as_an_event(tiny: LoadedModel) -> None:
    events = _run(tiny, "hi", SamplingParams(top_p=3.0))
    assert isinstance(events[0], Failed) and "top_p" in events[0].message


def test_chat_prompt_uses_the_tokenizers_template(tiny: LoadedModel) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    rendered = tiny.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)
    assert encode_prompt(tiny.tokenizer, messages, chat=True) == \
        tiny.tokenizer.encode(rendered, add_special_tokens=False)
    assert encode_prompt(tiny.tokenizer, "hi", chat=True) == encode_prompt(
        tiny.tokenizer, [{"role": "user", "content": "hi"}], chat=True)


# Mixtral-Instruct's own rule: only user and assistant, alternating, user first
STRICT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant') }}"
    "{% endif %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}"
)


def test_system_prompt_folds_into_the_first_turn_when_the_template_refuses_it(
        tiny: LoadedModel) -> None:
    tokenizer = copy.deepcopy(tiny.tokenizer)
    tokenizer.chat_template = STRICT_TEMPLATE
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    ids = encode_prompt(tokenizer, messages, chat=True)
    assert "[INST] be brief\n\nhi [/INST]" in tokenizer.decode(ids)


def test_a_conversation_the_template_refuses_is_an_invalid_request(tiny: LoadedModel) -> None:
    tokenizer = copy.deepcopy(tiny.tokenizer)
    tokenizer.chat_template = STRICT_TEMPLATE
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(InvalidRequestError, match="must alternate"):
        encode_prompt(tokenizer, messages, chat=True)


def test_token_readback_on_the_cpu_returns_each_id() -> None:
    readback = TokenReadback(torch.device("cpu"))
    for token in (5, 0, 31999):
        readback.start(torch.tensor([token]))
        assert readback.result() == token
