"""One token's way from attention into the experts, in one launch ("route").

Between a decoder layer's attention and its experts the torch path runs a residual
add, an RMSNorm, the router's logits, a softmax, the top-k and their renormalisation:
at batch 1 each is a tiny kernel (seven in the compiled decode step, ~9 us a layer on
an H100, most of it launch latency). `route` does all of it in one program:

    h = x + a                                   (the residual, in x's dtype)
    n = weight * (h * rsqrt(mean(h^2) + eps))   (RMSNorm: fp32, rounded before the scale)
    p = softmax(gate @ n)                       (fp32 logits and softmax)
    ids, w = top_k(p); w = w / sum(w)           (largest first, fp32)

The expert ids and weights stay on the device for `kernels.gemv.moe_decode`, so the
call goes into the step's CUDA graph. One program reads x, a, the norm's weight and the
[E, D] gate once; under programmatic dependent launch it loads the two weights before it
waits for the kernel before (they are not its output), so their latency is off the step's
critical path. A row longer than BLOCK_D takes two passes over x and a.

`add_norm` is the same program without the router: the residual add after the experts
with the next layer's input norm (three kernels on the torch path, ~4.6 us a layer).
`embed_norm` is the decode step's first launch: the token's embedding row and the first
layer's input norm, in place of an index, a norm and (axis 1) a lane-major copy.
"""

# Triton kernels take their arguments positionally.
# ruff: noqa: PLR0917

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from mixdesk.kernels.gemv import (
    check_device,
    check_prepared,
    pdl_launch_next,
    pdl_options,
    pdl_wait,
    prepare_x,
    prepared_lanes_per_shift,
    store_prepared,
)

# Hidden-state elements per step of the program's loops: Mixtral's whole row (D = 4096) in
# one step, 16 warps (103 registers a thread). On an H100, 1024 a step (four dependent rounds
# of loads) took 7.6 us a layer.
BLOCK_D = 4096


@triton.jit
def _norm(h, nw, rstd, n_dtype: tl.constexpr):
    """The RMSNorm of h (x's dtype) with weight nw: rounded before the scale, as torch does."""
    normed = (h.to(tl.float32) * rstd).to(h.dtype)
    return (nw.to(tl.float32) * normed.to(tl.float32)).to(n_dtype)


@triton.jit
def _residual(x_ptr, a_ptr, d, m):
    """h = x + a rounded to x's dtype (a, an fp32 GEMV output, rounded first)."""
    x = tl.load(x_ptr + d, mask=m, other=0.0)
    a = tl.load(a_ptr + d, mask=m, other=0.0).to(x.dtype)
    return (x.to(tl.float32) + a.to(tl.float32)).to(x.dtype)  # the residual, rounded as torch


@triton.jit
def _store_normed(n_ptr, d, m, n, D, LG: tl.constexpr, TRANS: tl.constexpr):
    """The normed row's elements d, plain, or lane-major for groups of LG (LG > 0: element i
    at (i % LG) * (D / LG) + i // LG, the axis-1 GEMV's XT input). TRANS (the whole row in
    one block, D = BD): transposed in registers and stored whole; else each element alone."""
    if LG == 0:
        tl.store(n_ptr + d, n, mask=m)
    elif TRANS:
        tl.store(n_ptr + d, tl.reshape(tl.trans(tl.reshape(n, [n.shape[0] // LG, LG])),
                                       [n.shape[0]]), mask=m)
    else:
        tl.store(n_ptr + (d % LG) * (D // LG) + d // LG, n, mask=m)


@triton.jit
def _row(x_ptr, a_ptr, d, m, EMBED: tl.constexpr):
    """The row to norm: x + a (`_residual`), or with EMBED x itself (an embedding row)."""
    if EMBED:
        return tl.load(x_ptr + d, mask=m, other=0.0)
    return _residual(x_ptr, a_ptr, d, m)


@triton.jit
def _route_kernel(x_ptr, a_ptr, nw_ptr, gw_ptr, h_ptr, n_ptr, ids_ptr, w_ptr, xp_ptr, D, eps,
                  E: tl.constexpr, EP: tl.constexpr, TOPK: tl.constexpr, KP: tl.constexpr,
                  BD: tl.constexpr, ONE_STEP: tl.constexpr, ROUTE: tl.constexpr,
                  LG: tl.constexpr = 0, TRANS: tl.constexpr = False, XP_BITS: tl.constexpr = 0,
                  XP_LPS: tl.constexpr = 1, EMBED: tl.constexpr = False,
                  PDL: tl.constexpr = False):
    """XP_BITS > 0 (ONE_STEP only): the normed row also goes to xp_ptr prepared for the
    experts' axis-1 GEMV of that many bits (`gemv.store_prepared`). EMBED: x_ptr is an
    embedding table and a_ptr the token id; the token's row is h (no add)."""
    pdl_launch_next(PDL)
    if EMBED:  # the step's first launch: the token comes from the step before (or a copy)
        pdl_wait(PDL)
        x_ptr += tl.load(a_ptr).to(tl.int64) * D
    d0 = tl.arange(0, BD)
    e = tl.arange(0, EP)
    emask = e < E
    n_dtype: tl.constexpr = n_ptr.dtype.element_ty
    if ONE_STEP:  # the whole row at once, each input loaded once
        m = d0 < D
        # the weights first: no kernel before writes them, so they load while it still runs
        if ROUTE:
            g = tl.load(gw_ptr + e[:, None] * D + d0[None, :],
                        mask=emask[:, None] & m[None, :], other=0.0)
        nw = tl.load(nw_ptr + d0, mask=m, other=0.0)
        pdl_wait(PDL)  # x and a are the kernels' before
        h = _row(x_ptr, a_ptr, d0, m, EMBED)
        tl.store(h_ptr + d0, h, mask=m)
        hf = h.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(hf * hf, 0) / D + eps)
        n = _norm(h, nw, rstd, n_dtype)
        _store_normed(n_ptr, d0, m, n, D, LG, TRANS)
        if XP_BITS > 0:
            col = tl.arange(0, BD // 8)
            store_prepared(xp_ptr, col, col < D // 8, tl.reshape(n.to(tl.float32), [BD // 8, 8]),
                           D // 8, XP_BITS, XP_LPS)
        if ROUTE:
            logits = tl.sum(g.to(tl.float32) * n.to(tl.float32)[None, :], 1)
    else:
        pdl_wait(PDL)  # x and a are the kernels' before
        sq = tl.zeros([BD], tl.float32)
        for start in range(0, D, BD):  # pass 1: the sum of h's squares
            d = start + d0
            hf = _row(x_ptr, a_ptr, d, d < D, EMBED).to(tl.float32)
            sq += hf * hf
        rstd = 1.0 / tl.sqrt(tl.sum(sq, 0) / D + eps)
        logits = tl.zeros([EP], tl.float32)
        for start in range(0, D, BD):  # pass 2: h, the normed row and the gate's dot products
            d = start + d0
            m = d < D
            h = _row(x_ptr, a_ptr, d, m, EMBED)
            tl.store(h_ptr + d, h, mask=m)
            n = _norm(h, tl.load(nw_ptr + d, mask=m, other=0.0), rstd, n_dtype)
            _store_normed(n_ptr, d, m, n, D, LG, False)
            if ROUTE:
                g = tl.load(gw_ptr + e[:, None] * D + d[None, :],
                            mask=emask[:, None] & m[None, :], other=0.0)
                logits += tl.sum(g.to(tl.float32) * n.to(tl.float32)[None, :], 1)
    if ROUTE:
        _top_k(logits, emask, e, ids_ptr, w_ptr, EP, TOPK, KP)


@triton.jit
def _top_k(logits, emask, e, ids_ptr, w_ptr, EP: tl.constexpr, TOPK: tl.constexpr,
           KP: tl.constexpr):
    """softmax over the experts, then the TOPK largest, renormalised, into ids and weights."""
    logits = tl.where(emask, logits, float("-inf"))
    p = tl.exp(logits - tl.max(logits, 0))
    p = p / tl.sum(p, 0)
    slot = tl.arange(0, KP)
    ids = tl.zeros([KP], tl.int64)
    weights = tl.zeros([KP], tl.float32)
    for k in tl.static_range(TOPK):  # the largest left, the lowest index on a tie
        best = tl.max(p, 0)
        pick = tl.min(tl.where(p == best, e, EP), 0)
        ids = tl.where(slot == k, pick.to(tl.int64), ids)
        weights = tl.where(slot == k, best, weights)
        p = tl.where(e == pick, float("-inf"), p)
    tl.store(ids_ptr + slot, ids, mask=slot < TOPK)
    tl.store(w_ptr + slot, weights / tl.sum(weights, 0), mask=slot < TOPK)  # renormalised


@torch.compiler.disable  # opaque to torch.compile, like the GEMVs: the glue around it fuses
def route(x: Tensor, a: Tensor, norm_weight: Tensor, gate_weight: Tensor, *, eps: float,
          top_k: int, prepared: Tensor | None = None, prepared_bits: int = 2
          ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The residual add, RMSNorm and top-k routing of one token (module docstring).

    Args:
        x: [D] the layer's input (the residual), fp16, bf16 or fp32.
        a: [D] the attention's output, in x's dtype or fp32 (o_proj's GEMV output, rounded
            to x's dtype before the add, as the torch path rounds it).
        norm_weight: [D] the post-attention RMSNorm's weight.
        gate_weight: [E, D] the router's weight.
        eps: the RMSNorm's epsilon.
        top_k: experts to choose, <= E.
        prepared: fp32 [XP_ROWS, D / 8] to write the normed row into as well, as
            `gemv.prepare_x(normed, prepared_bits)` gives it: the input of experts whose w1/w3
            read x prepared (`gemv.reads_prepared`; `gemv.moe_decode(..., x_prepared=)`).
        prepared_bits: the experts' bits, for `prepared`.

    Returns:
        (h [D] = x + a, normed h [D] (x's and norm_weight's dtypes promoted, as torch
        does), ids int64 [top_k], weights fp32 [top_k] summing to 1), largest weight first.
    """
    n_experts = gate_weight.shape[0]
    if gate_weight.shape != (n_experts, x.numel()):
        raise ValueError(f"shapes do not match: x {tuple(x.shape)}, gate "
                         f"{tuple(gate_weight.shape)}")
    if not 1 <= top_k <= n_experts:
        raise ValueError(f"top_k {top_k} is not in 1..{n_experts}")
    ids = torch.empty(top_k, dtype=torch.int64, device=x.device)
    weights = torch.empty(top_k, dtype=torch.float32, device=x.device)
    h, normed = _launch(x, a, norm_weight, eps, gate_weight, ids, weights,
                        prepared=prepared, prepared_bits=prepared_bits)
    return h, normed, ids, weights


@torch.compiler.disable  # opaque to torch.compile, like the GEMVs: the glue around it fuses
def add_norm(x: Tensor, a: Tensor, norm_weight: Tensor, *, eps: float,
             lane_group: int = 0) -> tuple[Tensor, Tensor]:
    """h = x + a and RMSNorm(h), in one launch: a layer's residual add after its experts
    with the next layer's input norm (or the final norm) on one token.

    Args:
        x: [D] the residual, fp16, bf16 or fp32.
        a: [D] what to add, in x's dtype or fp32 (rounded to x's dtype first).
        norm_weight: [D] the RMSNorm's weight.
        eps: its epsilon.
        lane_group: > 0: the normed row written lane-major for groups of that many (element i
            at (i % g) * (D / g) + i // g), as an axis-1 GEMV of that group reads it
            (`gemv(..., x_lane_major=True)`), which then needs no copy of its own.

    Returns:
        (h [D] in x's dtype, normed h [D], x's and norm_weight's dtypes promoted).
    """
    return _launch(x, a, norm_weight, eps, None, None, None, lane_group)


@torch.compiler.disable  # opaque to torch.compile, like the GEMVs: the glue around it fuses
def embed_norm(token: Tensor, table: Tensor, norm_weight: Tensor, *, eps: float,
               lane_group: int = 0) -> tuple[Tensor, Tensor]:
    """A token's embedding row and its RMSNorm, in one launch: the decode step's start (the
    first layer's input norm), reading the token id on the device.

    Args:
        token: one int id on the device, in 0..V-1 (a CUDA graph's token buffer).
        table: [V, D] the embedding table, fp16, bf16 or fp32.
        norm_weight: [D] the RMSNorm's weight.
        eps: its epsilon.
        lane_group: as `add_norm`'s.

    Returns:
        (x [D], the row in the table's dtype; normed x [D], as `add_norm` gives it).
    """
    if table.dim() != 2 or token.numel() != 1 or token.dtype not in {torch.int32, torch.int64}:
        raise ValueError(f"embed_norm takes one int id and a [V, D] table, got {token.dtype} "
                         f"{tuple(token.shape)} and {tuple(table.shape)}")
    return _launch(table, token, norm_weight, eps, None, None, None, lane_group, embed=True)


def _launch(x: Tensor, a: Tensor, norm_weight: Tensor, eps: float, gate_weight: Tensor | None,
            ids: Tensor | None, weights: Tensor | None, lane_group: int = 0, *,
            prepared: Tensor | None = None, prepared_bits: int = 2, embed: bool = False
            ) -> tuple[Tensor, Tensor]:
    """embed: x is a [V, D] table and a the token's id (`embed_norm`)."""
    check_device(x)
    dim = x.shape[-1] if embed else x.numel()
    if (not embed and a.numel() != dim) or norm_weight.numel() != dim:
        raise ValueError(f"shapes do not match: x {tuple(x.shape)}, a {tuple(a.shape)}, norm "
                         f"{tuple(norm_weight.shape)}")
    if lane_group < 0 or (lane_group and dim % lane_group):
        raise ValueError(f"lane_group {lane_group} does not divide the row's {dim} elements")
    if not embed and a.dtype not in {x.dtype, torch.float32}:
        raise ValueError(f"a is {a.dtype}: it must be x's dtype ({x.dtype}) or fp32")
    if prepared is not None:
        check_prepared(prepared, dim, "prepared")
    block = min(BLOCK_D, triton.next_power_of_2(dim))
    h = torch.empty(dim, dtype=x.dtype, device=x.device)
    normed = torch.empty(dim, dtype=torch.promote_types(norm_weight.dtype, x.dtype),
                         device=x.device)
    n_experts = 1 if gate_weight is None else gate_weight.shape[0]
    top_k = 1 if ids is None else ids.numel()
    gate = norm_weight if gate_weight is None else gate_weight.contiguous()  # unread: no router
    in_kernel = prepared is not None and dim <= block  # a longer row: prepare_x after it
    _route_kernel[(1,)](
        x.contiguous(), a.contiguous(), norm_weight.contiguous(), gate, h, normed,
        h if ids is None else ids, h if weights is None else weights,
        prepared if in_kernel else h, dim, eps,
        E=n_experts, EP=triton.next_power_of_2(n_experts), TOPK=top_k,
        KP=triton.next_power_of_2(top_k), BD=block, ONE_STEP=dim <= block,
        ROUTE=gate_weight is not None, LG=lane_group,
        TRANS=dim == block and lane_group > 0 and block % lane_group == 0,
        XP_BITS=prepared_bits if in_kernel else 0,
        XP_LPS=prepared_lanes_per_shift(prepared_bits), EMBED=embed,
        num_warps=max(1, min(16, block // 256)),
        **pdl_options(x),
    )
    if prepared is not None and not in_kernel:
        prepare_x(normed, prepared_bits, out=prepared)
    return h, normed
