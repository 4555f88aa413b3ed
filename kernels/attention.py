"""Decode attention over the used part of a static KV cache ("flash-decoding").

One new token's query heads against cache positions 0..pos, where pos is read from
device memory: the grid depends only on the cache length S, so one CUDA graph of a
decode step replays at every position, yet a step reads about pos + 1 positions of
the cache, not all S (the torch path reads all S and masks the rest).

Two launches:
- `_partial_kernel`, grid (chunks of CHUNK positions, batch * kv heads): a program
  takes the R query heads of its kv head (grouped-query) over its chunk, so each
  cache row is read once for all R heads. Online softmax in fp32, scores and
  p @ V with `tl.dot` (the R heads padded to 16 rows, the tensor cores' minimum).
  It writes the chunk's running max m, sum l and unnormalised output acc. A chunk
  past pos runs no iteration: m = -inf, l = 0, and acc is not stored.
- `_combine_kernel`, grid (batch * heads): the partials of the chunks up to pos,
  out = sum_c exp(m_c - M) acc_c / sum_c exp(m_c - M) l_c with M = max_c m_c.
"""

# Triton kernels take their arguments positionally.
# ruff: noqa: PLR0917

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from mixdesk.kernels.gemv import check_device, pdl_launch_next, pdl_options, pdl_wait

BLOCK_N = 64  # cache positions per tile of a program's loop (a [BLOCK_N, Hd] tile of K and V)
# Positions per chunk, measured on an H100 at the Mixtral shape (tests/bench/
# decode_attention_bench.py, chunks 64 to 512, pos from 100 to S - 1): 128 at S = 4096
# (256 programs) and 256 at S = 32768 (1024) were never more than 18% slower than the best
# chunk of a row. Smaller chunks write more partials; larger ones leave SMs idle.
MIN_CHUNK = 128
MAX_CHUNKS = 128
COMBINE_BLOCK = 16  # chunks per tile of the combine's loop


@triton.jit
def _partial_kernel(
    q_ptr, k_ptr, v_ptr, pos_ptr, m_ptr, l_ptr, acc_ptr,
    S, n_kv, n_chunks, scale,
    q_sb, q_sh, k_sb, k_sh, k_ss, v_sb, v_sh, v_ss,
    R: tl.constexpr, RP: tl.constexpr, HD: tl.constexpr, HDP: tl.constexpr,
    CHUNK: tl.constexpr, BN: tl.constexpr, PRECISION: tl.constexpr, PDL: tl.constexpr = False,
):
    pdl_launch_next(PDL)
    pdl_wait(PDL)  # the cache row and pos are the kernels' before (gemv.pdl_options)
    c = tl.program_id(0)
    bk = tl.program_id(1)
    b = (bk // n_kv).to(tl.int64)
    kv = (bk % n_kv).to(tl.int64)
    end = tl.minimum(tl.load(pos_ptr).to(tl.int32) + 1, S)  # positions 0..pos are used
    start = c * CHUNK
    stop = tl.minimum(start + CHUNK, end)  # <= start past pos: the loop runs no iteration

    r = tl.arange(0, RP)  # query head kv*R + r; rows R..RP-1 are padding (zeros)
    d = tl.arange(0, HDP)
    rmask = r < R
    dmask = d < HD
    q = tl.load(q_ptr + b * q_sb + (kv * R + r)[:, None] * q_sh + d[None, :],
                mask=rmask[:, None] & dmask[None, :], other=0.0)  # [RP, HDP]
    k_base = k_ptr + b * k_sb + kv * k_sh
    v_base = v_ptr + b * v_sb + kv * v_sh

    m_i = tl.full([RP], float("-inf"), tl.float32)  # running max of each head's scores
    l_i = tl.zeros([RP], tl.float32)  # running sum of exp(score - m_i)
    acc = tl.zeros([RP, HDP], tl.float32)  # running sum of exp(score - m_i) * v
    for n0 in range(start, stop, BN):
        n = n0 + tl.arange(0, BN)
        nmask = n < stop
        kt = tl.load(k_base + n[None, :] * k_ss + d[:, None],
                     mask=dmask[:, None] & nmask[None, :], other=0.0)  # [HDP, BN]
        s = tl.dot(q, kt, input_precision=PRECISION) * scale  # [RP, BN] fp32
        s = tl.where(nmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every tile has a used position
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        vt = tl.load(v_base + n[:, None] * v_ss + d[None, :],
                     mask=nmask[:, None] & dmask[None, :], other=0.0)  # [BN, HDP]
        # p in V's dtype for the tensor cores, as the torch path rounds it
        acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt, input_precision=PRECISION)
        m_i = m_new

    row = (b * n_kv + kv) * R + r  # b * H + head
    tl.store(m_ptr + row * n_chunks + c, m_i, mask=rmask)
    tl.store(l_ptr + row * n_chunks + c, l_i, mask=rmask)
    written = rmask & (start + r * 0 < end)  # [RP], a vector so the mask broadcasts
    tl.store(acc_ptr + (row * n_chunks + c)[:, None] * HD + d[None, :], acc,
             mask=written[:, None] & dmask[None, :])


@triton.jit
def _combine_kernel(
    m_ptr, l_ptr, acc_ptr, pos_ptr, out_ptr,
    S, n_heads, n_chunks, o_sb, o_sh,
    HD: tl.constexpr, HDP: tl.constexpr, CHUNK: tl.constexpr, BC: tl.constexpr,
    PDL: tl.constexpr = False,
):
    pdl_launch_next(PDL)
    pdl_wait(PDL)
    bh = tl.program_id(0).to(tl.int64)
    end = tl.minimum(tl.load(pos_ptr).to(tl.int32) + 1, S)
    used = (end + CHUNK - 1) // CHUNK  # chunks holding positions 0..pos; the rest are unread
    d = tl.arange(0, HDP)
    dmask = d < HD
    base = bh * n_chunks

    top = tl.full([BC], float("-inf"), tl.float32)
    for c0 in range(0, used, BC):
        c = c0 + tl.arange(0, BC)
        top = tl.maximum(top, tl.load(m_ptr + base + c, mask=c < used, other=float("-inf")))
    big_m = tl.max(top, 0)  # finite: chunk 0 holds position 0

    den = tl.zeros([BC], tl.float32)
    num = tl.zeros([BC, HDP], tl.float32)
    for c0 in range(0, used, BC):
        c = c0 + tl.arange(0, BC)
        cmask = c < used
        w = tl.exp(tl.load(m_ptr + base + c, mask=cmask, other=float("-inf")) - big_m)  # [BC]
        den += w * tl.load(l_ptr + base + c, mask=cmask, other=0.0)
        acc = tl.load(acc_ptr + (base + c)[:, None] * HD + d[None, :],
                      mask=cmask[:, None] & dmask[None, :], other=0.0)  # [BC, HDP]
        num += w[:, None] * acc
    y = tl.sum(num, 0) / tl.sum(den, 0)  # [HDP]
    b = bh // n_heads
    h = bh % n_heads
    tl.store(out_ptr + b * o_sb + h * o_sh + d, y.to(out_ptr.dtype.element_ty), mask=dmask)


@triton.jit
def _rope_qkv_kernel(
    qkv_ptr, cos_ptr, sin_ptr, pos_ptr, q_ptr, k_ptr, v_ptr,
    N, A, A_SUB, n_heads, k_sh, k_ss, v_sh, v_ss,
    PARTS: tl.constexpr, AXIS0: tl.constexpr, HD: tl.constexpr, HDP: tl.constexpr,
    PDL: tl.constexpr = False,
):
    """Program h < H: query head h, its rows gathered from the split q (`layout.merge_rows`)
    and rotated; program H + j: kv head j, k rotated, both written at cache row pos."""
    pdl_launch_next(PDL)
    pdl_wait(PDL)
    h = tl.program_id(0)
    d = tl.arange(0, HDP)
    dmask = d < HD
    HALF: tl.constexpr = HD // 2
    partner = (d + HALF) % HD  # rotate_half: -x[d + half] below half, x[d - half] above
    out_dtype = q_ptr.dtype.element_ty
    c = tl.load(cos_ptr + d, mask=dmask, other=0.0).to(out_dtype).to(tl.float32)
    s = tl.load(sin_ptr + d, mask=dmask, other=0.0).to(out_dtype).to(tl.float32)
    if h < n_heads:
        rows = h * HD + d  # q's own row order
        other = h * HD + partner
        if AXIS0:  # row m*A + i*A_SUB + a of W is row a + m*A_SUB of split matrix i
            rows = (rows % A) // A_SUB * N + rows % A % A_SUB + rows // A * A_SUB
            other = (other % A) // A_SUB * N + other % A % A_SUB + other // A * A_SUB
        x = tl.load(qkv_ptr + rows, mask=dmask, other=0.0).to(out_dtype).to(tl.float32)
        xo = tl.load(qkv_ptr + other, mask=dmask, other=0.0).to(out_dtype).to(tl.float32)
        rot = tl.where(d < HALF, -xo, xo)
        y = (x * c).to(out_dtype).to(tl.float32) + (rot * s).to(out_dtype).to(tl.float32)
        tl.store(q_ptr + h * HD + d, y.to(out_dtype), mask=dmask)
    else:
        j = h - n_heads
        pos = tl.load(pos_ptr)
        k_row = qkv_ptr + PARTS * N + j * HD
        x = tl.load(k_row + d, mask=dmask, other=0.0).to(out_dtype).to(tl.float32)
        xo = tl.load(k_row + partner, mask=dmask, other=0.0).to(out_dtype).to(tl.float32)
        rot = tl.where(d < HALF, -xo, xo)
        y = (x * c).to(out_dtype).to(tl.float32) + (rot * s).to(out_dtype).to(tl.float32)
        tl.store(k_ptr + j * k_sh + pos * k_ss + d, y.to(out_dtype), mask=dmask)
        v = tl.load(qkv_ptr + (PARTS + 1) * N + j * HD + d, mask=dmask, other=0.0)
        tl.store(v_ptr + j * v_sh + pos * v_ss + d, v.to(out_dtype), mask=dmask)


@torch.compiler.disable  # opaque to torch.compile, like the GEMVs
def rope_qkv(qkv: Tensor, pos: Tensor, k_cache: Tensor, v_cache: Tensor, *, cos: Tensor,
             sin: Tensor, parts: int, group: int, axis: int) -> Tensor:
    """One token's q, k and v from their stacked GEMV (`engine.fastpath.fuse_qkv`) into
    attention's inputs, in one launch: q put back in row order (`layout.merge_rows`) and
    rotated, k rotated and written with v at cache position pos, all rounded to the cache's
    dtype as the torch path rounds them (three fused kernels there).

    Args:
        qkv: fp32 [parts + 2, N]: q as `parts` matrices of N rows, then k and v (N = K*Hd).
        parts: how many matrices q was split into (>= 1).
        group, axis: q's quantization group and axis (its split's row order).
        cos, sin: [1, Hd] RoPE rows of the token's position (half-split layout).
        pos: int [1] on the device, the token's position.
        k_cache, v_cache: [1, K, S, Hd] static caches (batch 1), Hd contiguous.

    Returns:
        q [1, H, Hd] in the caches' dtype, rotated.
    """
    check_device(qkv)
    n_rows = qkv.shape[1]
    _, n_kv, _, head_dim = k_cache.shape
    q_rows = parts * n_rows
    if qkv.shape[0] != parts + 2 or qkv.dtype != torch.float32 or not qkv.is_contiguous():
        raise ValueError(f"qkv must be a contiguous fp32 [{parts} + 2, N], got "
                         f"{qkv.dtype} {tuple(qkv.shape)}")
    if (k_cache.shape[0] != 1 or v_cache.shape != k_cache.shape or n_rows != n_kv * head_dim
            or q_rows % head_dim or head_dim % 2 or k_cache.stride(3) != 1
            or v_cache.stride(3) != 1 or cos.numel() != head_dim or sin.numel() != head_dim):
        raise ValueError(f"shapes do not match: qkv {tuple(qkv.shape)}, caches "
                         f"{tuple(k_cache.shape)} {tuple(v_cache.shape)}, cos {tuple(cos.shape)}")
    n_heads = q_rows // head_dim
    q = torch.empty((1, n_heads, head_dim), dtype=k_cache.dtype, device=qkv.device)
    a_rows = q_rows // group  # q's group rows A, and each split matrix's
    _rope_qkv_kernel[(n_heads + n_kv,)](
        qkv, cos.contiguous(), sin.contiguous(), pos, q, k_cache, v_cache,
        n_rows, a_rows, a_rows // parts, n_heads, k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(1), v_cache.stride(2),
        PARTS=parts, AXIS0=axis == 0, HD=head_dim, HDP=triton.next_power_of_2(head_dim),
        num_warps=1, **pdl_options(qkv),
    )
    return q


def chunk_for(max_len: int) -> int:
    """Positions per program for a cache of `max_len`: a power of two >= MIN_CHUNK, with at
    most MAX_CHUNKS chunks (S = 4096: 32 chunks of 128; S = 32768: 128 of 256)."""
    return max(MIN_CHUNK, triton.next_power_of_2(math.ceil(max_len / MAX_CHUNKS)))


@torch.compiler.disable  # opaque to torch.compile, like the GEMVs: the glue around it fuses
def decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, pos: Tensor, scale: float,
                     *, chunk: int | None = None) -> Tensor:
    """softmax(q k^T * scale) v for one token over cache positions 0..pos, grouped-query.

    Reads only the chunks of the cache up to pos, and pos on the device (no host sync),
    so a CUDA graph captures it and a replay follows a new pos.

    Args:
        q: [B, H, Hd] query heads of the new token, fp16, bf16 or fp32; head h reads
            kv head h // (H / K).
        k_cache: [B, K, S, Hd] static key cache in q's dtype, Hd contiguous.
        v_cache: [B, K, S, Hd] static value cache, likewise.
        pos: int [1] on q's device, the new token's position (< S): it attends over
            positions 0..pos, which must already be written.
        scale: score scale, usually Hd ** -0.5.
        chunk: positions per program, a power of two >= 16; `chunk_for(S)` if None.

    Returns:
        [B, H, Hd] in q's dtype.
    """
    check_device(q)
    batch, n_heads, head_dim = q.shape
    _, n_kv, max_len, _ = k_cache.shape
    if (k_cache.shape != v_cache.shape or k_cache.shape[0] != batch
            or k_cache.shape[3] != head_dim or n_heads % n_kv):
        raise ValueError(f"shapes do not match: q {tuple(q.shape)}, k {tuple(k_cache.shape)}, "
                         f"v {tuple(v_cache.shape)}")
    if not q.dtype == k_cache.dtype == v_cache.dtype:
        raise ValueError(f"dtypes differ: q {q.dtype}, k {k_cache.dtype}, v {v_cache.dtype}")
    if k_cache.stride(3) != 1 or v_cache.stride(3) != 1 or pos.numel() != 1:
        raise ValueError("the caches need a contiguous last dim and pos one element")
    chunk = chunk or chunk_for(max_len)
    if chunk < 16 or chunk & (chunk - 1):
        raise ValueError(f"chunk {chunk} is not a power of two >= 16")
    rep = n_heads // n_kv
    n_chunks = math.ceil(max_len / chunk)
    q = q.contiguous()
    m = torch.empty((batch * n_heads, n_chunks), dtype=torch.float32, device=q.device)
    lse = torch.empty_like(m)
    acc = torch.empty((batch * n_heads, n_chunks, head_dim), dtype=torch.float32,
                      device=q.device)
    out = torch.empty_like(q)
    head_pad = triton.next_power_of_2(max(16, head_dim))  # tl.dot's least size
    pdl = pdl_options(q)  # both launches
    _partial_kernel[(n_chunks, batch * n_kv)](
        q, k_cache, v_cache, pos, m, lse, acc,
        max_len, n_kv, n_chunks, scale,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        R=rep, RP=triton.next_power_of_2(max(16, rep)), HD=head_dim, HDP=head_pad,
        CHUNK=chunk, BN=min(chunk, BLOCK_N),
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",  # tf32 is a no-op on fp16
        num_warps=4, **pdl,
    )
    _combine_kernel[(batch * n_heads,)](
        m, lse, acc, pos, out, max_len, n_heads, n_chunks, out.stride(0), out.stride(1),
        HD=head_dim, HDP=head_pad, CHUNK=chunk, BC=COMBINE_BLOCK, num_warps=4, **pdl,
    )
    return out
