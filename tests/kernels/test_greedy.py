"""`kernels.greedy.greedy_next` against torch.argmax: in the interpreter on small and odd
vocabularies (CPU, CI), and on the GPU at Mixtral's 32000 (`pytest -m gpu`)."""

from __future__ import annotations

import pytest
import torch

from mixdesk.kernels import reference
from mixdesk.kernels.greedy import greedy_next

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def check(logits: torch.Tensor) -> int:
    """The kernel's token and pos against the reference's, and the token in the host ring at
    pos % 5 (slot 1; pinned host memory on a GPU); returns the token."""
    token = torch.full((1, 1), -1, dtype=torch.long, device=logits.device)
    pos = torch.tensor([41], device=logits.device)
    want_token, want_pos = token.clone(), pos.clone()
    ring = torch.full((5,), -1, dtype=torch.long, pin_memory=CUDA)
    want_ring = ring.clone()
    greedy_next(logits, token, pos, host=ring)
    reference.greedy_next(logits, want_token, want_pos, host=want_ring)
    if CUDA:
        torch.cuda.synchronize()  # the kernel wrote the ring over the bus
    assert torch.equal(token, want_token) and int(pos) == int(want_pos) == 42
    assert torch.equal(ring, want_ring) and ring.tolist() == [-1, int(token), -1, -1, -1]
    return int(token)


@pytest.mark.parametrize("vocab", [
    7,  # fewer logits than a warp
    5000,  # two loop steps of 4096, a masked tail
    pytest.param(32000, marks=[pytest.mark.gpu, pytest.mark.skipif(
        not CUDA, reason="needs a CUDA GPU")]),  # Mixtral's
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_greedy_next_is_the_argmax(vocab: int, dtype: torch.dtype) -> None:
    """Fresh logits each run; then the largest put twice, in one lane (4096 apart) and in two
    lanes: the first index wins, as torch.argmax gives it; all -inf gives 0."""
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    logits = torch.randn(vocab, generator=gen).to(DEVICE, dtype)
    check(logits)
    top = logits.float().max() + 1
    same_lane = (vocab - 1 - 4096, vocab - 1) if vocab > 4096 else (0, vocab - 1)
    for first, second in (same_lane, (1, 2)):
        tied = logits.clone()
        tied[first] = tied[second] = top
        assert check(tied) == min(first, second)
    assert check(torch.full((vocab,), float("-inf"), device=DEVICE, dtype=dtype)) == 0


def test_greedy_next_refuses_what_it_cannot_write() -> None:
    logits = torch.randn(16, device=DEVICE)
    pos = torch.zeros(1, dtype=torch.long, device=DEVICE)
    with pytest.raises(ValueError, match="token must be one int64"):
        greedy_next(logits, torch.zeros(1, dtype=torch.int32, device=DEVICE), pos)
    with pytest.raises(ValueError, match="pos must be one int64"):
        greedy_next(logits, pos.clone(), torch.zeros(2, dtype=torch.long, device=DEVICE))
    with pytest.raises(ValueError, match="contiguous"):
        greedy_next(torch.randn(2, 16, device=DEVICE)[:, 0], pos.clone(), pos)
    with pytest.raises(ValueError, match="host must be a pinned int64"):
        greedy_next(logits, pos.clone(), pos, host=torch.zeros(4, dtype=torch.int32))
    if CUDA:  # device memory, or host memory the GPU cannot write
        for host in (torch.zeros(4, dtype=torch.long, device=DEVICE),
                     torch.zeros(4, dtype=torch.long)):
            with pytest.raises(ValueError, match="host must be a pinned int64"):
                greedy_next(logits, pos.clone(), pos, host=host)
