"""Decode attention against its torch reference: in the interpreter on small, odd shapes
(CPU, CI), and on the GPU at the Mixtral-8x7B shape, in a CUDA graph too (`pytest -m gpu`)."""

from __future__ import annotations

import time

import pytest
import torch

from mixdesk.kernels import attention, reference
from mixdesk.kernels.attention import chunk_for, decode_attention, qkv_attention

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref.double()).norm() / ref.double().norm())


Shape = tuple[int, int, int, int, int]  # batch, heads, kv heads, head dim, cache length


def random_inputs(shape: Shape, dtype: torch.dtype
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fresh q, k cache and v cache every call; the seed is printed (shown on a failure)."""
    batch, heads, kv_heads, head_dim, max_len = shape
    seed = time.time_ns() % 2**31
    print(f"seed {seed}")
    gen = torch.Generator().manual_seed(seed)

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(DEVICE, dtype)

    return (draw(batch, heads, head_dim), draw(batch, kv_heads, max_len, head_dim),
            draw(batch, kv_heads, max_len, head_dim))


def check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, at: int, *,
          chunk: int | None = None) -> tuple[float, float]:
    """The kernel at position `at`: its error against the reference in the inputs' dtype,
    and against the reference on fp32 copies (the torch path rounds scores and
    probabilities to fp16; the kernel keeps them in fp32 until p @ V)."""
    pos = torch.tensor([at], device=DEVICE)
    scale = q.shape[-1] ** -0.5
    y = decode_attention(q, k, v, pos, scale, chunk=chunk)
    assert y.shape == q.shape and y.dtype == q.dtype
    assert torch.isfinite(y).all()
    ref = reference.decode_attention(q, k, v, pos, scale)
    exact = reference.decode_attention(q.float(), k.float(), v.float(), pos, scale)
    # the last program of each kv head combined and set its arrival counter back to zero
    assert not attention._counters(k.device, k.shape[0] * k.shape[1]).any()
    return rel_error(y, ref), rel_error(y, exact)


# (shape, chunk): R = 4, 1, 3 and 4; S not a multiple of the chunk; head dims that are not
# powers of two; batch 2; several chunks, and one (the default chunk, 128, at S = 70).
INTERPRETER_CASES: list[tuple[Shape, int | None]] = [
    ((1, 4, 1, 16, 50), 16),
    ((1, 3, 3, 24, 37), 16),
    ((1, 6, 2, 32, 100), 32),
    ((2, 8, 2, 40, 70), None),
]


@pytest.mark.skipif(CUDA, reason="the GPU run checks the Mixtral shape instead")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize(("shape", "chunk"), INTERPRETER_CASES)
def test_decode_attention_interpreter(shape: Shape, chunk: int | None,
                                      dtype: torch.dtype) -> None:
    q, k, v = random_inputs(shape, dtype)
    max_len = shape[4]
    mid = int(torch.randint(1, max_len - 1, ()))
    for at in (0, mid, max_len - 1):  # the first chunk only, a chunk's middle, the very last
        same_dtype, exact = check(q, k, v, at, chunk=chunk)
        if dtype == torch.float32:
            assert same_dtype < 1e-5, at
        else:
            assert same_dtype < 2e-3 and exact < 1e-3, at


@pytest.mark.skipif(CUDA, reason="the GPU tests read full caches")
def test_decode_attention_reads_nothing_past_pos() -> None:
    """NaN in every position past pos changes nothing: those rows are never loaded."""
    q, k, v = random_inputs((1, 4, 2, 16, 90), torch.float16)
    pos = torch.tensor([40], device=DEVICE)
    clean = decode_attention(q, k, v, pos, 0.25, chunk=16)
    k[:, :, 41:], v[:, :, 41:] = float("nan"), float("nan")
    assert torch.equal(decode_attention(q, k, v, pos, 0.25, chunk=16), clean)


def test_decode_attention_rejects_mismatched_inputs() -> None:
    q, k, v = random_inputs((1, 4, 2, 16, 20), torch.float32)
    pos = torch.tensor([3], device=DEVICE)
    with pytest.raises(ValueError, match="dtypes differ"):
        decode_attention(q.half(), k, v, pos, 0.25)
    with pytest.raises(ValueError, match="shapes do not match"):
        decode_attention(q[:, :3], k, v, pos, 0.25)
    with pytest.raises(ValueError, match="power of two"):
        decode_attention(q, k, v, pos, 0.25, chunk=24)


def test_chunk_for_bounds_the_grid() -> None:
    assert chunk_for(100) == 128
    assert chunk_for(4096) == 128  # 32 chunks: 256 programs at 8 kv heads
    assert chunk_for(32768) == 256  # 128 chunks: 1024 programs


# Mixtral-8x7B: 32 query heads on 8 kv heads of 128.
HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("max_len", [4096, 32768])
def test_decode_attention_mixtral_shape(max_len: int, dtype: torch.dtype) -> None:
    q, k, v = random_inputs((1, HEADS, KV_HEADS, HEAD_DIM, max_len), dtype)
    tol = 1e-3 if dtype == torch.float16 else 8e-3  # bf16 has 3 fewer mantissa bits
    for at in (0, 100, max_len // 2 + 13, max_len - 1):
        same_dtype, exact = check(q, k, v, at)
        assert same_dtype <= tol and exact <= tol, at


@pytest.mark.gpu
@needs_cuda
def test_decode_attention_in_a_cuda_graph() -> None:
    """Captured once at one position; each replay follows the position in device memory
    (a host sync would fail the capture), on a grid fixed by the cache length."""
    q, k, v = random_inputs((1, HEADS, KV_HEADS, HEAD_DIM, 4096), torch.float16)
    pos = torch.tensor([7], device="cuda")
    decode_attention(q, k, v, pos, HEAD_DIM**-0.5)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = decode_attention(q, k, v, pos, HEAD_DIM**-0.5)
    for at in (7, 300, 4095, 64, 0):
        pos.fill_(at)
        q.copy_(torch.randn_like(q))
        graph.replay()
        ref = reference.decode_attention(q, k, v, pos, HEAD_DIM**-0.5)
        assert rel_error(out, ref) <= 1e-3, at


@pytest.mark.parametrize(("parts", "group", "axis", "dtype", "at", "out_group"), [
    (4, 64, 0, torch.float16, 5, 0),  # Mixtral's q as 4 matrices of k's shape, in small
    (2, 8, 0, torch.float32, 37, 0),  # pos in the last of 3 chunks (16 positions a chunk)
    (3, 16, 1, torch.float16, 0, 0),  # pos 0: the token attends to itself only
    (3, 16, 1, torch.float32, 21, 16),  # the output lane-major, for an axis-1 o GEMV
    (4, 64, 0, torch.float16, 30, 64),  # groups of 64 over heads of 64
])
def test_qkv_attention_equals_the_torch_path(  # noqa: PLR0917 - pytest parameters
        parts: int, group: int, axis: int, dtype: torch.dtype, at: int, out_group: int) -> None:
    """Attention of one token from its stacked q, k and v GEMV output, in one launch: q back in
    row order and rotated, k rotated into the cache at pos and v copied there, then attention
    over positions 0..pos, as the torch path computes them; with out_group, written
    lane-major."""
    seed = time.time_ns() % 2**31
    print(f"seed {seed}")
    gen = torch.Generator().manual_seed(seed)
    n_kv, head_dim, max_len = 2, 32 * parts // 2 if axis == 0 else 24, 40
    n_rows = n_kv * head_dim  # k's rows; q has parts times as many
    qkv = torch.randn(parts + 2, n_rows, generator=gen).to(DEVICE)
    angles = torch.rand(head_dim // 2, generator=gen) * 6
    cos, sin = (torch.cat([f(angles)] * 2)[None].to(DEVICE) for f in (torch.cos, torch.sin))
    pos = torch.tensor([at], device=DEVICE)
    caches = [torch.randn(1, n_kv, max_len, head_dim, generator=gen).to(DEVICE, dtype)
              for _ in range(2)]
    want_caches = [c.clone() for c in caches]
    kw = {"cos": cos, "sin": sin, "parts": parts, "group": group, "axis": axis,
          "scale": head_dim**-0.5, "out_group": out_group}
    y = qkv_attention(qkv, pos, *caches, chunk=16, **kw)
    want = reference.qkv_attention(qkv, pos, *want_caches, **kw)
    assert y.dtype == dtype and y.shape == want.shape == (1, parts * n_rows // head_dim, head_dim)
    tol = 1e-5 if dtype == torch.float32 else 2e-3  # fp16: p @ V rounds p, as the torch path
    assert rel_error(y, want) < tol
    cache_tol = 0 if dtype == torch.float32 else 1e-3  # fp16: at most one rounding apart
    for got, ref in zip(caches, want_caches, strict=True):
        assert torch.allclose(got.float(), ref.float(), rtol=cache_tol, atol=cache_tol)
    assert not attention._counters(caches[0].device, n_kv).any()
    # the whole RoPE tables, row pos read by the kernel: the same, bit for bit (the cache
    # row pos written again with the same values)
    tables = [torch.randn(max_len, head_dim, generator=gen).to(DEVICE) for _ in range(2)]
    tables[0][at], tables[1][at] = cos[0], sin[0]
    at_pos = {**kw, "cos": tables[0], "sin": tables[1]}
    assert torch.equal(qkv_attention(qkv, pos, *caches, chunk=16, **at_pos), y)
    assert rel_error(reference.qkv_attention(qkv, pos, *want_caches, **at_pos), want) == 0
    with pytest.raises(ValueError, match="shapes do not match"):
        qkv_attention(qkv, pos, *caches, **{**at_pos, "cos": tables[0][1:]})
    with pytest.raises(ValueError, match="qkv"):
        qkv_attention(qkv[:-1], pos, *caches, **kw)
    with pytest.raises(ValueError, match="shapes do not match"):
        qkv_attention(qkv, pos, caches[0], caches[1][..., :-2], **kw)
    with pytest.raises(ValueError, match="out_group"):
        qkv_attention(qkv, pos, *caches, **{**kw, "out_group": 7})
