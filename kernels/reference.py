"""Pure-torch references: each kernel's function with the same signature, in fp32.

`dequantize_logical` reads the logical form (layout.py) and shares no code with
the packing, so tests check `pack` and the kernels against it; `unpack` is the
exact inverse of `pack`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mixdesk.kernels.layout import (
    PackedWeight,
    group_grid,
    lanes_per_word,
    merge_rows,
    meta_from_table,
    meta_groups,
)


def dequantize_logical(q: Tensor, scale_q: Tensor, zero_q: Tensor, meta: Tensor, *, bits: int,
                       group: int, axis: int) -> Tensor:
    """fp32 [N, K] from the logical form: W = (q - zero) * scale, both meta levels in fp32."""
    del bits  # the codes already carry it; kept for the same signature as `pack`
    n_rows, k = q.shape
    n = n_rows * k // group
    c = torch.arange(n, device=q.device) % meta.shape[1]  # meta group of each group
    s_step, s_off, z_step, z_off = meta.float()[:, c]
    scale = (scale_q.float() - s_off) * s_step  # [n]
    zero = (zero_q.float() - z_off) * z_step
    if axis == 0:
        return ((q.reshape(group, n).float() - zero) * scale).reshape(n_rows, k)
    return ((q.reshape(n, group).float() - zero[:, None]) * scale[:, None]).reshape(n_rows, k)


def unpack(pw: PackedWeight, mat: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Inverse of `pack` for matrix `mat` of the stack: (q, scale_q, zero_q, meta)."""
    a_rows, b_cols = group_grid(pw.shape, pw.group, pw.axis)
    v = lanes_per_word(pw.bits)
    words = pw.codes[mat]  # [S, A, B]
    lanes = torch.stack([(words[m // v] >> (pw.bits * (m % v))) & (2**pw.bits - 1)
                         for m in range(pw.group)])  # [g, A, B]
    if pw.axis == 0:
        q = lanes.reshape(pw.shape)
    else:
        q = lanes.permute(1, 2, 0).reshape(pw.shape)
    mq = (words[0] >> 16) if pw.meta is None else pw.meta[mat].to(torch.int32)
    scale_q = (mq & 255).reshape(-1).to(torch.uint8)
    zero_q = ((mq >> 8) & 255).reshape(-1).to(torch.uint8)
    # table column j holds meta group j % C, and the table has at least C columns
    meta = meta_from_table(pw.table[mat][:, : meta_groups(a_rows * b_cols)], pw.bits)
    return q.to(torch.uint8), scale_q, zero_q, meta


def dequantize(pw: PackedWeight, mat: int = 0) -> Tensor:
    """fp32 [N, K] of matrix `mat`, through `unpack`."""
    q, scale_q, zero_q, meta = unpack(pw, mat)
    return dequantize_logical(q, scale_q, zero_q, meta, bits=pw.bits, group=pw.group,
                              axis=pw.axis)


def gemv(x: Tensor, pw: PackedWeight, out: Tensor | None = None, *,
         x_lane_major: bool = False) -> Tensor:
    """Reference of `kernels.gemv.gemv`: fp32 [N] = W @ x, or [M, N] for a stack of M; x given
    lane-major (`lane_major`) with `x_lane_major`."""
    if x_lane_major:
        x = x.reshape(pw.group, -1).t().reshape(-1)
    y = torch.stack([dequantize(pw, m) @ x.float() for m in range(pw.n_mats)])
    y = y[0] if pw.n_mats == 1 else y
    if out is not None:
        out += y
        return out
    return y


def moe_decode(x: Tensor, w13: PackedWeight, w2: PackedWeight, topk_ids: Tensor,
               topk_weights: Tensor, *, out: Tensor | None = None) -> Tensor:
    """Reference of `kernels.gemv.moe_decode`: sum over slots s of
    w_s * W2[e_s] (silu(W1[e_s] x) * W3[e_s] x), fp32 [D]."""
    y = torch.zeros(w2.shape[0], dtype=torch.float32, device=x.device)
    for e, w in zip(topk_ids.tolist(), topk_weights.float().tolist(), strict=True):
        h1 = dequantize(w13, 2 * e) @ x.float()
        h3 = dequantize(w13, 2 * e + 1) @ x.float()
        y += w * (dequantize(w2, e) @ (torch.nn.functional.silu(h1) * h3))
    if out is not None:
        out += y
        return out
    return y


def fill_slots(src: Tensor, dst: Tensor, ids: Tensor, pos: Tensor, first: int) -> None:
    """dst[pos[j]] = src[ids[j]] for every j with pos[j] >= first (the kernel's contract)."""
    for e, p in zip(ids.tolist(), pos.tolist(), strict=True):
        if p >= first:
            dst[p].copy_(src[e])


def decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, pos: Tensor,
                     scale: float) -> Tensor:
    """Reference of `kernels.attention.decode_attention`, the torch decode path of
    `engine.model.Attention`: the whole cache, positions > pos masked to -inf, fp32 softmax.

    q [B, H, Hd]; caches [B, K, S, Hd]; pos [1]. Returns [B, H, Hd] in q's dtype."""
    batch, n_heads, head_dim = q.shape
    n_kv, max_len = k_cache.shape[1], k_cache.shape[2]
    qg = q.view(batch, n_kv, n_heads // n_kv, head_dim)  # [B, K, R, Hd]
    wide = torch.promote_types(q.dtype, torch.float32)
    scores = (qg @ k_cache.transpose(-1, -2)).to(wide) * scale  # [B, K, R, S]
    mask = torch.arange(max_len, device=q.device) <= pos.reshape(1)  # [S]
    scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1).to(v_cache.dtype) @ v_cache).view(batch, n_heads, head_dim)


def route(x: Tensor, a: Tensor, norm_weight: Tensor, gate_weight: Tensor, *, eps: float,
          top_k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Reference of `kernels.router.route`: the ops of `engine.model.Block` and `MoE` on one
    token (residual add, RMSNorm, fp32 router, softmax, top-k, renormalised)."""
    h, normed = add_norm(x, a, norm_weight, eps=eps)
    probs = torch.softmax((normed.float()[None] * gate_weight.float()).sum(-1), -1)  # [E]
    weights, ids = torch.topk(probs, top_k)
    return h, normed, ids, weights / weights.sum()


def add_norm(x: Tensor, a: Tensor, norm_weight: Tensor, *, eps: float,
             lane_group: int = 0) -> tuple[Tensor, Tensor]:
    """Reference of `kernels.router.add_norm`: h = x + a (a rounded to x's dtype), RMSNorm(h),
    that lane-major for groups of `lane_group` if it is > 0."""
    h = x.reshape(-1) + a.reshape(-1).to(x.dtype)
    hf = h.float()
    normed = norm_weight * (hf * torch.rsqrt(hf.pow(2).mean() + eps)).to(h.dtype)
    return h, lane_major(normed, lane_group) if lane_group else normed


def dense_gemv(x: Tensor, weight: Tensor, out: Tensor | None = None) -> Tensor:
    """Reference of `kernels.dense.dense_gemv`: weight @ x in fp32, in weight's dtype."""
    y = (weight.float() @ x.reshape(-1).float()).to(weight.dtype)
    if out is not None:
        out.copy_(y)
        return out
    return y


def embed_norm(token: Tensor, table: Tensor, norm_weight: Tensor, *, eps: float,
               lane_group: int = 0) -> tuple[Tensor, Tensor]:
    """Reference of `kernels.router.embed_norm`: the token's row of the table and
    `add_norm`'s norm of it."""
    x = table[token.reshape(-1)[0]]
    return add_norm(x, torch.zeros_like(x), norm_weight, eps=eps, lane_group=lane_group)


def lane_major(x: Tensor, group: int) -> Tensor:
    """x's elements flat, element i at (i % group) * (n / group) + i // group: the order an
    axis-1 GEMV of that group reads x in (`gemv(..., x_lane_major=True)`)."""
    return x.reshape(-1, group).t().reshape(x.shape)


def greedy_next(logits: Tensor, token: Tensor, pos: Tensor, host: Tensor | None = None
                ) -> None:
    """Reference of `kernels.greedy.greedy_next`: token = argmax(logits) (also into
    host[pos % R] if given), pos += 1."""
    token.copy_(logits.argmax().reshape(token.shape))
    if host is not None:
        host[int(pos.reshape(-1)[0]) % host.numel()] = token.reshape(-1)[0].cpu()
    pos.add_(1)


def prepare_x(x: Tensor, bits: int, lanes_per_shift: int) -> Tensor:
    """Reference of `kernels.gemv.prepare_x` (the kernels take `lanes_per_shift` from
    `gemv.prepared_lanes_per_shift(bits)`): fp32 [10, K/8], row j < 8 lane j of each group of 8
    times 2**(bits*k) (k: lane j's place below the top lane of its `lanes_per_shift`), row 8
    the groups' sums of x, row 9 row 8 minus the sums of rows 0..7."""
    groups = x.float().reshape(-1, 8)  # [K/8, 8]
    lane = torch.arange(8, device=x.device)
    top = torch.clamp((lane // lanes_per_shift) * lanes_per_shift + lanes_per_shift - 1, max=7)
    scaled = groups * torch.exp2((bits * (top - lane)).float())
    total = groups.sum(1)
    return torch.cat([scaled.t(), total[None], (total - scaled.sum(1))[None]])


def qkv_attention(qkv: Tensor, pos: Tensor, k_cache: Tensor, v_cache: Tensor, *, cos: Tensor,
                  sin: Tensor, parts: int, group: int, axis: int, scale: float,
                  out_group: int = 0) -> Tensor:
    """Reference of `kernels.attention.qkv_attention`: `rope_qkv`, then `decode_attention`,
    that lane-major (`lane_major`) for groups of `out_group` if it is > 0."""
    q = rope_qkv(qkv, pos, k_cache, v_cache, cos=cos, sin=sin, parts=parts, group=group,
                 axis=axis)
    y = decode_attention(q, k_cache, v_cache, pos, scale)
    return lane_major(y, out_group) if out_group else y


def rope_qkv(qkv: Tensor, pos: Tensor, k_cache: Tensor, v_cache: Tensor, *, cos: Tensor,
             sin: Tensor, parts: int, group: int, axis: int) -> Tensor:
    """q, k and v of one token from their stacked GEMV output as the torch path computes
    them (`engine.model`'s rotation in the caches' dtype, the cache writes): q [1, H, Hd]
    back in row order and rotated; k rotated and v written at cache row pos."""
    dtype = k_cache.dtype
    head_dim = k_cache.shape[3]
    q = merge_rows(qkv[:parts], group, axis).to(dtype).view(1, -1, head_dim)  # [1, H, Hd]
    k = qkv[parts].to(dtype).view(1, -1, head_dim)
    half = head_dim // 2
    at = int(pos.reshape(-1)[0])
    if cos.numel() > head_dim:  # the whole tables: row pos
        cos, sin = cos[at], sin[at]

    def rotate(x: Tensor) -> Tensor:
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos.reshape(-1).to(dtype) + rotated * sin.reshape(-1).to(dtype)

    k_cache[0, :, at] = rotate(k)[0]
    v_cache[0, :, at] = qkv[parts + 1].to(dtype).view(-1, head_dim)
    return rotate(q)
