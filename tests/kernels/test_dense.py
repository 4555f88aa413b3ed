"""The lm_head's dense GEMV against its torch reference: in the interpreter on small, odd
shapes (CPU, CI), and on the GPU at Mixtral's lm_head (`pytest -m gpu`)."""

from __future__ import annotations

import time

import pytest
import torch

from mixdesk.kernels import reference
from mixdesk.kernels.dense import dense_gemv

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref.double()).norm() / ref.double().norm())


def check(n: int, k: int, dtype: torch.dtype, tile: tuple[int, int, int] | None = None) -> float:
    """Fresh random weight and x every call (seed printed); error against fp64."""
    seed = time.time_ns() % 2**31
    print(f"seed {seed}")
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(n, k, generator=gen).to(DEVICE, dtype)
    x = torch.randn(k, generator=gen).to(DEVICE, dtype)
    y = dense_gemv(x, weight, tile=tile)
    assert y.shape == (n,) and y.dtype == dtype
    want = weight.double() @ x.double()
    assert rel_error(reference.dense_gemv(x, weight), want) < 1e-2
    return rel_error(y, want)


@pytest.mark.skipif(CUDA, reason="checked at the lm_head's size on the GPU")
@pytest.mark.parametrize(("n", "k", "tile"), [
    (37, 100, None),  # rows past the last tile, K short of one step
    (64, 1300, (8, 512, 4)),  # K not a multiple of the step: the last step masked
    (5, 2048, (16, 256, 2)),  # fewer rows than a tile
])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dense_gemv_interpreter(n: int, k: int, tile: tuple[int, int, int] | None,
                                dtype: torch.dtype) -> None:
    """Within the rounding of the output to its dtype (fp32: to fp32 summation order)."""
    bound = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    assert check(n, k, dtype, tile) < bound


@pytest.mark.skipif(CUDA, reason="the interpreter's")
def test_dense_gemv_writes_out_and_refuses_what_does_not_match() -> None:
    weight = torch.randn(12, 40)
    x = torch.randn(1, 1, 40)  # the decode step's normed row, [1, 1, K]
    out = torch.full((12,), float("nan"))
    assert dense_gemv(x, weight, out) is out
    assert rel_error(out, weight @ x.reshape(-1)) < 1e-6
    with pytest.raises(ValueError, match="K elements of x"):
        dense_gemv(x[..., :39], weight)
    with pytest.raises(ValueError, match=r"contiguous \[N, K\]"):
        dense_gemv(torch.randn(12), weight.t())
    with pytest.raises(ValueError, match="out must be"):
        dense_gemv(x, weight, torch.empty(12, dtype=torch.float16))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dense_gemv_lm_head_shape(dtype: torch.dtype) -> None:
    """Mixtral's lm_head, 32000 x 4096."""
    bound = 1e-3 if dtype == torch.float16 else 8e-3  # the output's rounding
    assert check(32000, 4096, dtype) <= bound
