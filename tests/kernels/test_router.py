"""`kernels.router.route` against its torch reference: in the interpreter on small and odd
shapes (CPU, CI), and on the GPU at the Mixtral-8x7B shape (`pytest -m gpu`)."""

from __future__ import annotations

import time

import pytest
import torch

from mixdesk.kernels import reference
from mixdesk.kernels.gemv import XP_ROWS, prepare_x, prepared_lanes_per_shift
from mixdesk.kernels.router import add_norm, embed_norm, route

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def inputs(dim: int, experts: int, dtype: torch.dtype
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fresh x, a, norm weight and gate weight every call; the seed is printed."""
    seed = time.time_ns() % 2**31
    print(f"seed {seed}")
    gen = torch.Generator().manual_seed(seed)

    def draw(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (scale * torch.randn(*shape, generator=gen)).to(DEVICE, dtype)

    return draw(dim), draw(dim), 1 + draw(dim, scale=0.1), draw(experts, dim, scale=dim**-0.5)


def check(dim: int, experts: int, top_k: int, dtype: torch.dtype, *,
          a_fp32: bool = False) -> None:
    x, a, norm_w, gate_w = inputs(dim, experts, dtype)
    if a_fp32:  # o_proj's GEMV output, rounded to x's dtype by the kernel as by the torch path
        a = a.float() + torch.rand_like(a.float()) * 1e-3
    x_next, n_next = add_norm(x, a, norm_w, eps=1e-5)
    want_next, want_n_next = reference.add_norm(x, a, norm_w, eps=1e-5)
    assert torch.equal(x_next, want_next)
    tol = 1e-6 if dtype == torch.float32 else 8e-3
    assert torch.allclose(n_next.float(), want_n_next.float(), rtol=tol, atol=tol / 8)
    h, normed, ids, weights = route(x, a, norm_w, gate_w, eps=1e-5, top_k=top_k)
    want_h, want_n, want_ids, want_w = reference.route(x, a, norm_w, gate_w, eps=1e-5, top_k=top_k)
    assert torch.equal(h, want_h)  # one rounding of the same fp32 sum
    assert normed.dtype == want_n.dtype
    tol = 1e-6 if dtype == torch.float32 else 8e-3  # rsqrt and the sum's order: one ulp of n
    assert torch.allclose(normed.float(), want_n.float(), rtol=tol, atol=tol / 8)
    assert ids.dtype == torch.int64 and weights.dtype == torch.float32
    assert torch.equal(ids, want_ids), (ids, want_ids)
    assert torch.allclose(weights, want_w, rtol=1e-4, atol=1e-6)
    assert abs(float(weights.sum()) - 1) < 1e-6


@pytest.mark.skipif(CUDA, reason="the GPU run checks the Mixtral shape instead")
@pytest.mark.parametrize(("dim", "experts", "top_k", "dtype", "a_fp32"), [
    (64, 8, 2, torch.float32, False),  # Mixtral's experts and top-k, a small row
    (5000, 8, 2, torch.float32, False),  # two loop steps of 4096, a masked tail
    (40, 3, 1, torch.float32, False),  # experts not a power of two, top-1
    (96, 6, 3, torch.float16, False),
    (96, 8, 2, torch.float16, True),  # a: an fp32 GEMV output
])
def test_route_interpreter(dim: int, experts: int, top_k: int, dtype: torch.dtype,
                           a_fp32: bool) -> None:
    check(dim, experts, top_k, dtype, a_fp32=a_fp32)


@pytest.mark.parametrize(("dim", "group", "dtype"), [
    (64, 8, torch.float32),  # the row in one block: transposed in registers
    (4096, 64, torch.float16),  # Mixtral's, as the axis-1 q/k/v GEMV reads it
    (96, 8, torch.float16),  # a padded block: element by element
    (5000, 8, torch.float32),  # two loop steps
    pytest.param(4096, 64, torch.bfloat16, marks=[pytest.mark.gpu, pytest.mark.skipif(
        not CUDA, reason="needs a CUDA GPU")]),  # Mixtral's on the GPU
])
def test_add_norm_writes_the_normed_row_lane_major(dim: int, group: int,
                                                   dtype: torch.dtype) -> None:
    """With lane_group the normed row comes lane-major (element i at (i % g) * (D/g) + i // g),
    h as before; a group that does not divide the row is refused."""
    x, a, norm_w, _ = inputs(dim, 8, dtype)
    h, normed = add_norm(x, a, norm_w, eps=1e-5, lane_group=group)
    want_h, want_n = reference.add_norm(x, a, norm_w, eps=1e-5, lane_group=group)
    assert torch.equal(h, want_h)
    tol = 1e-6 if dtype == torch.float32 else 8e-3
    assert torch.allclose(normed.float(), want_n.float(), rtol=tol, atol=tol / 8)
    plain = add_norm(x, a, norm_w, eps=1e-5)[1]
    assert torch.equal(normed.reshape(group, -1).t().reshape(-1), plain)
    with pytest.raises(ValueError, match="lane_group"):
        add_norm(x, a, norm_w, eps=1e-5, lane_group=7)


@pytest.mark.parametrize(("dim", "group", "dtype"), [
    (64, 0, torch.float32),  # the row in one block
    (96, 8, torch.float16),  # a padded block, lane-major element by element
    (5000, 8, torch.bfloat16),  # two loop steps
    pytest.param(4096, 64, torch.float16, marks=[pytest.mark.gpu, pytest.mark.skipif(
        not CUDA, reason="needs a CUDA GPU")]),  # Mixtral's on the GPU
])
def test_embed_norm_reads_the_token_on_the_device(dim: int, group: int,
                                                  dtype: torch.dtype) -> None:
    """The decode step's first launch: the token's embedding row (the id read on the device)
    and its RMSNorm, lane-major with lane_group, as the torch path's embedding and norm give
    them; the first and the last id; a table or id of the wrong shape is refused."""
    seed = time.time_ns() % 2**31
    print(f"seed {seed}")
    gen = torch.Generator().manual_seed(seed)
    vocab = 37
    table = torch.randn(vocab, dim, generator=gen).to(DEVICE, dtype)
    norm_w = (1 + 0.1 * torch.randn(dim, generator=gen)).to(DEVICE, dtype)
    for tid in (0, vocab - 1, int(torch.randint(vocab, (1,), generator=gen))):
        token = torch.tensor([[tid]], device=DEVICE)
        x, normed = embed_norm(token, table, norm_w, eps=1e-5, lane_group=group)
        want_x, want_n = reference.embed_norm(token, table, norm_w, eps=1e-5, lane_group=group)
        assert torch.equal(x, table[tid]) and torch.equal(want_x, x)
        # two roundings (before and after the scale): an ulp or two of fp16, bf16
        tol = {torch.float32: 1e-6, torch.float16: 8e-3, torch.bfloat16: 3e-2}[dtype]
        assert torch.allclose(normed.float(), want_n.float(), rtol=tol, atol=tol / 8)
    with pytest.raises(ValueError, match="one int id"):
        embed_norm(token.float(), table, norm_w, eps=1e-5)
    with pytest.raises(ValueError, match="one int id"):
        embed_norm(token, table[0], norm_w, eps=1e-5)
    with pytest.raises(ValueError, match="shapes do not match"):
        embed_norm(token, table, norm_w[:8], eps=1e-5)


@pytest.mark.parametrize(("dim", "bits", "dtype"), [
    (64, 2, torch.float32),  # the row in one block: written by the route kernel
    (96, 4, torch.float16),  # a padded block, 4 bits: no lanes share a shift
    (5000, 2, torch.float32),  # two loop steps: prepare_x after the route kernel
    pytest.param(4096, 2, torch.float16, marks=[pytest.mark.gpu, pytest.mark.skipif(
        not CUDA, reason="needs a CUDA GPU")]),  # Mixtral's on the GPU
])
def test_route_writes_the_experts_input_prepared(dim: int, bits: int, dtype: torch.dtype) -> None:
    """With `prepared` the normed row also comes as the axis-1 expert GEMV reads it
    (`gemv.prepare_x` of the normed row); the rest of route's output is unchanged; a buffer of
    the wrong shape is refused before any launch."""
    x, a, norm_w, gate_w = inputs(dim, 8, dtype)
    prepared = torch.full((XP_ROWS, dim // 8), float("nan"), device=DEVICE)
    h, normed, ids, weights = route(x, a, norm_w, gate_w, eps=1e-5, top_k=2, prepared=prepared,
                                    prepared_bits=bits)
    want = reference.prepare_x(normed, bits, prepared_lanes_per_shift(bits))
    assert torch.equal(prepared[:8], want[:8])  # x times powers of 2: exact
    assert torch.allclose(prepared[8:], want[8:], rtol=1e-5, atol=1e-4)  # sums: their order
    assert torch.equal(prepared[:8], prepare_x(normed, bits)[:8])
    plain = route(x, a, norm_w, gate_w, eps=1e-5, top_k=2)
    for got, was in zip((h, normed, ids, weights), plain, strict=True):
        assert torch.equal(got, was)
    with pytest.raises(ValueError, match="prepared must be"):
        route(x, a, norm_w, gate_w, eps=1e-5, top_k=2, prepared=prepared[:, 1:])


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_route_mixtral_shape(dtype: torch.dtype) -> None:
    for i in range(20):  # fresh inputs each time
        check(4096, 8, 2, dtype, a_fp32=i % 2 == 1)


def test_route_refuses_what_does_not_match() -> None:
    x, a, norm_w, gate_w = inputs(64, 8, torch.float32)
    with pytest.raises(ValueError, match="shapes"):
        route(x, a[:32], norm_w, gate_w, eps=1e-5, top_k=2)
    with pytest.raises(ValueError, match="x's dtype"):
        route(x, a.double(), norm_w, gate_w, eps=1e-5, top_k=2)
    with pytest.raises(ValueError, match="shapes"):
        add_norm(x, a, norm_w[:8], eps=1e-5)
    with pytest.raises(ValueError, match="top_k"):
        route(x, a, norm_w, gate_w, eps=1e-5, top_k=9)
