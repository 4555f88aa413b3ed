"""One token through a dense (fp16, bf16 or fp32) weight: the lm_head of the decode step.

`dense_gemv` is y = W x for W [N, K] and one x [K], fp32 accumulation, y rounded to W's
dtype as `nn.Linear` gives it. A program takes BLOCK_N rows and walks K in steps of
BLOCK_K, the next step's weights loaded before this step's math. On the decode graph's
programmatic-dependent-launch chain (`gemv.pdl_options`) it starts while the norm before it
still runs and loads its first weights then (they are no kernel's output); cuBLAS's GEMV,
which it replaces there, is off that chain, so the step waited for it to launch, and for the
argmax after it (`kernels.greedy`) likewise.
"""

# Triton kernels take their arguments positionally.
# ruff: noqa: PLR0917

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from mixdesk.kernels.gemv import check_device, pdl_launch_next, pdl_options, pdl_wait

# Rows and columns a program step, warps: measured at the lm_head's shape (32000 x 4096 fp16)
# on an H100 (tests/bench/dense_sweep.py, tests/bench/results/h100-s14-dense/): 90.4 us
# (2900 GB/s) against cuBLAS's 101.7 us (2577 GB/s); (8, 512, 4) 92.2 us
BLOCK_N = 4
BLOCK_K = 512
WARPS = 4


@triton.jit
def _dense_gemv_kernel(x_ptr, w_ptr, y_ptr, N, K, BN: tl.constexpr, BK: tl.constexpr,
                       PDL: tl.constexpr = False):
    pdl_launch_next(PDL)
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    rmask = rows < N
    cols = tl.arange(0, BK)
    base = w_ptr + rows.to(tl.int64)[:, None] * K
    w = tl.load(base + cols[None, :], mask=rmask[:, None] & (cols < K)[None, :], other=0.0)
    pdl_wait(PDL)  # x is the kernel before's output
    acc = tl.zeros([BN, BK], tl.float32)
    for k0 in range(0, K, BK):
        k = k0 + cols
        kn = k + BK  # the next step's columns; all masked off after the last
        w_next = tl.load(base + kn[None, :], mask=rmask[:, None] & (kn < K)[None, :], other=0.0)
        xk = tl.load(x_ptr + k, mask=k < K, other=0.0).to(tl.float32)
        acc += w.to(tl.float32) * xk[None, :]
        w = w_next
    tl.store(y_ptr + rows, tl.sum(acc, 1).to(y_ptr.dtype.element_ty), mask=rmask)


@torch.compiler.disable  # opaque to torch.compile, like the GEMVs: the glue around it fuses
def dense_gemv(x: Tensor, weight: Tensor, out: Tensor | None = None, *,
               tile: tuple[int, int, int] | None = None) -> Tensor:
    """y = weight @ x for one token, fp32 accumulation.

    Args:
        x: [K] (any shape of K elements), fp16, bf16 or fp32.
        weight: [N, K] contiguous, fp16, bf16 or fp32.
        out: [N] to write, in weight's dtype; new if None.
        tile: (rows, columns, warps) a program step, powers of 2; (BLOCK_N, BLOCK_K, WARPS)
            if None.

    Returns:
        `out`, [N] in weight's dtype.
    """
    check_device(x)
    if weight.dim() != 2 or x.numel() != weight.shape[1] or not weight.is_contiguous():
        raise ValueError(f"dense_gemv takes a contiguous [N, K] weight and K elements of x, got "
                         f"{tuple(weight.shape)} and {tuple(x.shape)}")
    n_rows, k = weight.shape
    if out is None:
        out = torch.empty(n_rows, dtype=weight.dtype, device=weight.device)
    elif out.shape != (n_rows,) or out.dtype != weight.dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {weight.dtype} [{n_rows}]")
    block_n, block_k, warps = tile or (BLOCK_N, BLOCK_K, WARPS)
    _dense_gemv_kernel[(triton.cdiv(n_rows, block_n),)](
        x.reshape(-1).contiguous(), weight, out, n_rows, k, BN=block_n,
        BK=min(block_k, triton.next_power_of_2(k)), num_warps=warps, **pdl_options(x))
    return out
