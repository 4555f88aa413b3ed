"""The end of a greedy decode step, in one launch ("greedy_next").

A decode graph (`engine.fastpath.DecodeGraph`) ends by writing its logits' argmax into
the token buffer the next replay reads and advancing its position, so a greedy step needs
no launch of its own before the next replay. In torch that was three kernels: the argmax
(a reduction over the vocabulary: 10.9 us a step on an H100 at 32000 logits,
tests/bench/results/h100-s13-profile/), the copy into the token buffer and the add to pos.
`greedy_next` is one program: it reads the logits in blocks, keeps each lane's largest
value and its first index, and takes the first index of the largest at the end, as
`torch.argmax` does (the lowest index on a tie). Given a ring of pinned host memory it also
writes the id there, at the step's position modulo the ring's length: the host reads it once
the step is done, with no copy launched between two replays.
"""

# Triton kernels take their arguments positionally.
# ruff: noqa: PLR0917

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from mixdesk.kernels.gemv import check_device, pdl_launch_next, pdl_options, pdl_wait

BLOCK_V = 4096  # logits a step of the program's loop (16 warps)


@triton.jit
def _greedy_kernel(logits_ptr, token_ptr, pos_ptr, host_ptr, V, R, BLOCK: tl.constexpr,
                   HOST: tl.constexpr = False, PDL: tl.constexpr = False):
    pdl_launch_next(PDL)
    offs = tl.arange(0, BLOCK)
    best = tl.full([BLOCK], float("-inf"), tl.float32)
    first = tl.zeros([BLOCK], tl.int32)
    pdl_wait(PDL)  # the logits are the kernel before's
    for start in range(0, V, BLOCK):
        i = start + offs
        v = tl.load(logits_ptr + i, mask=i < V, other=float("-inf")).to(tl.float32)
        take = v > best  # strictly: a lane keeps the first index of its largest
        best = tl.where(take, v, best)
        first = tl.where(take, i, first)
    top = tl.max(best, 0)
    token = tl.min(tl.where(best == top, first, V), 0)
    pos = tl.load(pos_ptr)
    tl.store(token_ptr, token.to(tl.int64))
    if HOST:  # pinned host memory, written over the bus: the host reads it after the step
        tl.store(host_ptr + pos % R, token.to(tl.int64))
    tl.store(pos_ptr, pos + 1)


@torch.compiler.disable  # opaque to torch.compile, like the other kernels
def greedy_next(logits: Tensor, token: Tensor, pos: Tensor, host: Tensor | None = None
                ) -> None:
    """token = argmax(logits) and pos += 1, in place, in one launch (no host sync).

    Args:
        logits: [V] fp16, bf16 or fp32, contiguous (a step's last position).
        token: int64 with one element, the next step's token buffer.
        pos: int64 with one element, the step's position buffer.
        host: int64 [R] in pinned host memory (on a GPU; any host tensor in the
            interpreter): the id also goes to host[pos % R], pos as it was before the + 1.
    """
    check_device(logits)
    if logits.dim() != 1 or logits.numel() == 0 or not logits.is_contiguous():
        raise ValueError(f"logits must be a contiguous [V], got {tuple(logits.shape)}")
    for name, t in (("token", token), ("pos", pos)):
        if t.numel() != 1 or t.dtype != torch.int64:
            raise ValueError(f"{name} must be one int64, got {t.dtype} {tuple(t.shape)}")
    if host is not None and (host.dim() != 1 or host.dtype != torch.int64 or not host.numel()
                             or host.device.type != "cpu"
                             or (logits.device.type == "cuda" and not host.is_pinned())):
        raise ValueError(f"host must be a pinned int64 [R] on the host, got {host.dtype} "
                         f"{tuple(host.shape)} on {host.device}")
    _greedy_kernel[(1,)](logits, token, pos, token if host is None else host, logits.numel(),
                         1 if host is None else host.numel(),
                         BLOCK=min(BLOCK_V, triton.next_power_of_2(logits.numel())),
                         HOST=host is not None, num_warps=16, **pdl_options(logits))
