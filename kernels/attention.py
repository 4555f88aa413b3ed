"""Decode attention over the used part of a static KV cache ("flash-decoding").

One new token's query heads against cache positions 0..pos, where pos is read from
device memory: the grid depends only on the cache length S, so one CUDA graph of a
decode step replays at every position, yet a step reads about pos + 1 positions of
the cache, not all S (the torch path reads all S and masks the rest).

One launch, `_attention_kernel`, grid (chunks of CHUNK positions, batch * kv heads):
- a program takes the R query heads of its kv head (grouped-query) over its chunk, so
  each cache row is read once for all R heads. Online softmax in fp32, scores and
  p @ V with `tl.dot` (the R heads padded to 16 rows, the tensor cores' minimum).
  It writes the chunk's running max m, sum l and unnormalised output acc. A chunk
  past pos runs no iteration: m = -inf, l = 0, and acc is not stored.
- then it counts itself in its kv head's counter (an atomic add, acquire-release); the
  last of the kv head's programs combines the partials of the chunks up to pos,
  out = sum_c exp(m_c - M) acc_c / sum_c exp(m_c - M) l_c with M = max_c m_c, and sets
  the counter back to zero.
`qkv_attention` runs the same launch from the q/k/v GEMV's fp32 output: each program
rotates its heads' q (RoPE), and the program whose chunk holds pos first writes the
token's rotated k and its v into the caches.
"""

# Triton kernels take their arguments positionally, and the attention kernel is one long body.
# ruff: noqa: PLR0917, PLR0915

from __future__ import annotations

import math
from typing import Any

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
COMBINE_BLOCK = 8  # chunks per tile of the combine's loop


@triton.jit
def _rope(qkv_ptr, rows, other, mask, c, s, d, HALF: tl.constexpr, dtype: tl.constexpr):
    """RoPE of the fp32 rows qkv[rows] (partners qkv[other]) with the cos and sin rows c, s, each
    product rounded to `dtype` as the torch path's ops round them; fp32 out."""
    x = tl.load(qkv_ptr + rows, mask=mask, other=0.0).to(dtype).to(tl.float32)
    xo = tl.load(qkv_ptr + other, mask=mask, other=0.0).to(dtype).to(tl.float32)
    rot = tl.where(d < HALF, -xo, xo)
    return (x * c).to(dtype).to(tl.float32) + (rot * s).to(dtype).to(tl.float32)


@triton.jit
def _split_row(rows, N, A, A_SUB, AXIS0: tl.constexpr):
    """Row `rows` of q in its own order -> its index in the split stack (`layout.split_rows`):
    at axis 0 row m*A + i*A_SUB + a of W is row a + m*A_SUB of split matrix i."""
    if AXIS0:
        rows = (rows % A) // A_SUB * N + rows % A % A_SUB + rows // A * A_SUB
    return rows


@triton.jit
def _attention_kernel(
    q_ptr, k_ptr, v_ptr, pos_ptr, m_ptr, l_ptr, acc_ptr, cnt_ptr, out_ptr,
    qkv_ptr, cos_ptr, sin_ptr,
    S, n_kv, n_chunks, scale,
    q_sb, q_sh, k_sb, k_sh, k_ss, v_sb, v_sh, v_ss, o_sb, o_sh, N, A, A_SUB, CS_ROW,
    R: tl.constexpr, RP: tl.constexpr, RC: tl.constexpr, HD: tl.constexpr, HDP: tl.constexpr,
    CHUNK: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr, PRECISION: tl.constexpr,
    QKV: tl.constexpr = False, PARTS: tl.constexpr = 1, AXIS0: tl.constexpr = False,
    OG: tl.constexpr = 0, PDL: tl.constexpr = False,
):
    """Program (c, b*K + kv): the R query heads of kv head kv over chunk c of the cache; the
    last program of a kv head to finish (a counter) combines the chunks into the output.

    QKV: q, k and v come from their stacked fp32 GEMV output instead (`qkv_attention`): each
    program rotates its heads' q itself, and the program whose chunk holds pos first writes
    the token's rotated k and its v at cache row pos.

    pos, cos, sin and the chunk's first block of cache rows before pos load before the PDL
    wait (they are not the kernel before's output), and a chunk past pos loads no q.

    OG > 0 (batch 1): the output lane-major for groups of OG (`qkv_attention`'s out_group)."""
    pdl_launch_next(PDL)
    c = tl.program_id(0)
    bk = tl.program_id(1)
    b = (bk // n_kv).to(tl.int64)
    kv = (bk % n_kv).to(tl.int64)
    # pos, cos and sin are filled before the step's kernels run (no PDL kernel writes them),
    # and cache rows before pos by earlier steps: all of them load before the wait
    pos = tl.load(pos_ptr).to(tl.int32)
    end = tl.minimum(pos + 1, S)  # positions 0..pos are used
    start = c * CHUNK
    stop = tl.minimum(start + CHUNK, end)  # <= start past pos: the loop runs no iteration

    r = tl.arange(0, RP)  # query head kv*R + r; rows R..RP-1 are padding (zeros)
    d = tl.arange(0, HDP)
    rmask = r < R
    dmask = d < HD
    k_base = k_ptr + b * k_sb + kv * k_sh
    v_base = v_ptr + b * v_sb + kv * v_sh
    n_first = start + tl.arange(0, BN)  # the chunk's first block: its rows before pos
    early = n_first < tl.minimum(stop, pos)
    kt_first = tl.load(k_base + n_first[None, :] * k_ss + d[:, None],
                       mask=dmask[:, None] & early[None, :], other=0.0)  # [HDP, BN]
    vt_first = tl.load(v_base + n_first[:, None] * v_ss + d[None, :],
                       mask=early[:, None] & dmask[None, :], other=0.0)  # [BN, HDP]
    if QKV:
        cs = tl.load(cos_ptr + pos * CS_ROW + d, mask=dmask, other=0.0)  # the row, or row pos
        sn = tl.load(sin_ptr + pos * CS_ROW + d, mask=dmask, other=0.0)
    pdl_wait(PDL)  # q, and the cache row pos (written by the kernel before or below)
    if QKV:  # batch 1
        dtype = k_ptr.dtype.element_ty
        HALF: tl.constexpr = HD // 2
        partner = (d + HALF) % HD  # rotate_half: -x[d + half] below half, x[d - half] above
        cs = cs.to(dtype).to(tl.float32)
        sn = sn.to(dtype).to(tl.float32)
        heads = (kv * R + r)[:, None] * HD
        used = rmask & (start + r * 0 < end)  # a chunk past pos never reads q: no loads
        q = _rope(qkv_ptr, _split_row(heads + d[None, :], N, A, A_SUB, AXIS0),
                  _split_row(heads + partner[None, :], N, A, A_SUB, AXIS0),
                  used[:, None] & dmask[None, :], cs[None, :], sn[None, :], d[None, :],
                  HALF, dtype).to(dtype)  # [RP, HDP]
        if (start <= pos) & (pos < start + CHUNK):  # this chunk reads row pos: write it first
            k_row = qkv_ptr + PARTS * N + kv * HD
            kr = _rope(k_row, d, partner, dmask, cs, sn, d, HALF, dtype)
            tl.store(k_base + pos * k_ss + d, kr.to(dtype), mask=dmask)
            vr = tl.load(qkv_ptr + (PARTS + 1) * N + kv * HD + d, mask=dmask, other=0.0)
            tl.store(v_base + pos * v_ss + d, vr.to(dtype), mask=dmask)
            tl.debug_barrier()  # the row is visible to the whole program before it is read
    else:
        q = tl.load(q_ptr + b * q_sb + (kv * R + r)[:, None] * q_sh + d[None, :],
                    mask=rmask[:, None] & dmask[None, :], other=0.0)  # [RP, HDP]

    m_i = tl.full([RP], float("-inf"), tl.float32)  # running max of each head's scores
    l_i = tl.zeros([RP], tl.float32)  # running sum of exp(score - m_i)
    acc = tl.zeros([RP, HDP], tl.float32)  # running sum of exp(score - m_i) * v
    for n0 in range(start, stop, BN):
        n = n0 + tl.arange(0, BN)
        nmask = n < stop
        first = n < start + BN  # all of the first block, none of a later one
        late = nmask & ((n >= pos) | ~first)  # the rows not loaded ahead of the wait
        kt = tl.load(k_base + n[None, :] * k_ss + d[:, None],
                     mask=dmask[:, None] & late[None, :], other=0.0)  # [HDP, BN]
        kt += tl.where(first[None, :], kt_first, tl.zeros_like(kt_first))
        s = tl.dot(q, kt, input_precision=PRECISION) * scale  # [RP, BN] fp32
        s = tl.where(nmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every tile has a used position
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        vt = tl.load(v_base + n[:, None] * v_ss + d[None, :],
                     mask=late[:, None] & dmask[None, :], other=0.0)  # [BN, HDP]
        vt += tl.where(first[:, None], vt_first, tl.zeros_like(vt_first))
        # p in V's dtype for the tensor cores, as the torch path rounds it
        acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt, input_precision=PRECISION)
        m_i = m_new

    row = (b * n_kv + kv) * R + r  # b * H + head
    tl.store(m_ptr + row * n_chunks + c, m_i, mask=rmask)
    tl.store(l_ptr + row * n_chunks + c, l_i, mask=rmask)
    written = rmask & (start + r * 0 < end)  # [RP], a vector so the mask broadcasts
    tl.store(acc_ptr + (row * n_chunks + c)[:, None] * HD + d[None, :], acc,
             mask=written[:, None] & dmask[None, :])
    tl.debug_barrier()  # every thread's partials stored before the count (release) below
    if tl.atomic_add(cnt_ptr + bk, 1, sem="acq_rel") == n_chunks - 1:  # the last: combine
        _combine(m_ptr, l_ptr, acc_ptr, out_ptr, (b * n_kv + kv) * R, b, kv * R, end,
                 n_chunks, o_sb, o_sh, R, RC, HD, HDP, CHUNK, BC, OG)
        tl.store(cnt_ptr + bk, 0)  # ready for the next launch


@triton.jit
def _combine(m_ptr, l_ptr, acc_ptr, out_ptr, row0, b, h0, end, n_chunks, o_sb, o_sh,
             R: tl.constexpr, RC: tl.constexpr, HD: tl.constexpr, HDP: tl.constexpr,
             CHUNK: tl.constexpr, BC: tl.constexpr, OG: tl.constexpr):
    """out of heads h0..h0+R-1: the partials of the chunks up to pos,
    sum_c exp(m_c - M) acc_c / sum_c exp(m_c - M) l_c with M = max_c m_c. Reads bypass L1
    (.cg): other programs, on other SMs, wrote them."""
    used = (end + CHUNK - 1) // CHUNK  # chunks holding positions 0..pos; the rest are unread
    h = tl.arange(0, RC)
    hmask = h < R
    d = tl.arange(0, HDP)
    dmask = d < HD
    base = (row0 + h) * n_chunks  # [RC]
    top = tl.full([RC, BC], float("-inf"), tl.float32)
    for c0 in range(0, used, BC):
        cc = c0 + tl.arange(0, BC)
        cm = hmask[:, None] & (cc < used)[None, :]
        top = tl.maximum(top, tl.load(m_ptr + base[:, None] + cc[None, :], mask=cm,
                                      other=float("-inf"), cache_modifier=".cg"))
    big_m = tl.max(top, 1)  # [RC], finite for real heads: chunk 0 holds position 0
    big_m = tl.where(hmask, big_m, 0.0)
    den = tl.zeros([RC, BC], tl.float32)
    num = tl.zeros([RC, HDP], tl.float32)
    for c0 in range(0, used, BC):
        cc = c0 + tl.arange(0, BC)
        cm = hmask[:, None] & (cc < used)[None, :]
        idx = base[:, None] + cc[None, :]  # [RC, BC]
        w = tl.exp(tl.load(m_ptr + idx, mask=cm, other=float("-inf"), cache_modifier=".cg")
                   - big_m[:, None])
        den += w * tl.load(l_ptr + idx, mask=cm, other=0.0, cache_modifier=".cg")
        acc = tl.load(acc_ptr + idx[:, :, None] * HD + d[None, None, :],
                      mask=cm[:, :, None] & dmask[None, None, :], other=0.0,
                      cache_modifier=".cg")  # [RC, BC, HDP]
        num += tl.sum(w[:, :, None] * acc, 1)
    y = num / tl.where(hmask, tl.sum(den, 1), 1.0)[:, None]  # [RC, HDP]; padding heads 0/1
    if OG:  # batch 1, lane-major for groups of OG: flat i at (i % OG) * (H*HD / OG) + i // OG
        i = (h0 + h)[:, None] * HD + d[None, :]
        dst = out_ptr + (i % OG) * (o_sb // OG) + i // OG
    else:
        dst = out_ptr + b * o_sb + (h0 + h)[:, None] * o_sh + d[None, :]
    tl.store(dst, y.to(out_ptr.dtype.element_ty), mask=hmask[:, None] & dmask[None, :])


@torch.compiler.disable  # opaque to torch.compile, like the GEMVs
def qkv_attention(qkv: Tensor, pos: Tensor, k_cache: Tensor, v_cache: Tensor, *, cos: Tensor,
                  sin: Tensor, parts: int, group: int, axis: int, scale: float,
                  chunk: int | None = None, out_group: int = 0) -> Tensor:
    """One token's attention from its stacked q, k and v GEMV output (`engine.fastpath.fuse_qkv`),
    in one launch: q put back in row order (`layout.merge_rows`) and rotated, k rotated and
    written with v at cache position pos, all rounded to the cache's dtype as the torch path
    rounds them, then `decode_attention` over positions 0..pos.

    Args:
        qkv: fp32 [parts + 2, N]: q as `parts` matrices of N rows, then k and v (N = K*Hd).
        parts: how many matrices q was split into (>= 1).
        group, axis: q's quantization group and axis (its split's row order).
        cos, sin: [1, Hd] RoPE rows of the token's position (half-split layout), or the
            whole [S, Hd] tables: the kernel then reads row pos itself (no index launch).
        pos: int [1] on the device, the token's position.
        k_cache, v_cache: [1, K, S, Hd] static caches (batch 1), Hd contiguous.
        scale, chunk: as `decode_attention`'s.
        out_group: > 0: the output written lane-major for groups of that many (flat element
            i at (i % g) * (H*Hd / g) + i // g), as the axis-1 o GEMV of that group reads it
            (`gemv(..., x_lane_major=True)`), which then needs no copy of its own.

    Returns:
        [1, H, Hd] in the caches' dtype (lane-major in memory with `out_group`).
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
            or v_cache.stride(3) != 1 or cos.shape != sin.shape
            or cos.numel() not in {head_dim, k_cache.shape[2] * head_dim}
            or cos.shape[-1] != head_dim or k_cache.dtype != v_cache.dtype or pos.numel() != 1):
        raise ValueError(f"shapes do not match: qkv {tuple(qkv.shape)}, caches "
                         f"{tuple(k_cache.shape)} {tuple(v_cache.shape)}, cos {tuple(cos.shape)}")
    n_heads = q_rows // head_dim
    if n_heads % n_kv:
        raise ValueError(f"{n_heads} query heads do not share {n_kv} kv heads evenly")
    if out_group < 0 or (out_group and q_rows % out_group):
        raise ValueError(f"out_group {out_group} does not divide the output's {q_rows} elements")
    a_rows = q_rows // group  # q's group rows A, and each split matrix's
    return _attend(qkv, k_cache, v_cache, pos, scale, chunk, n_heads, qkv_args={
        "qkv": qkv, "cos": cos.contiguous(), "sin": sin.contiguous(),
        "cs_row": head_dim if cos.numel() > head_dim else 0,
        "rows": (n_rows, a_rows, a_rows // parts), "parts": parts, "axis0": axis == 0,
        "out_group": out_group})


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
    return _attend(q.contiguous(), k_cache, v_cache, pos, scale, chunk, n_heads)


def _attend(q: Tensor, k_cache: Tensor, v_cache: Tensor, pos: Tensor, scale: float,
            chunk: int | None, n_heads: int, qkv_args: dict[str, Any] | None = None) -> Tensor:
    """The one launch of `decode_attention` (q given, [B, H, Hd]) or of `qkv_attention`
    (`qkv_args`: q, k and v from their GEMV output; q is that output, unread)."""
    batch, n_kv, max_len, head_dim = k_cache.shape
    chunk = chunk or chunk_for(max_len)
    if chunk < 16 or chunk & (chunk - 1):
        raise ValueError(f"chunk {chunk} is not a power of two >= 16")
    rep = n_heads // n_kv
    n_chunks = math.ceil(max_len / chunk)
    dev = k_cache.device
    m = torch.empty((batch * n_heads, n_chunks), dtype=torch.float32, device=dev)
    lse = torch.empty_like(m)
    acc = torch.empty((batch * n_heads, n_chunks, head_dim), dtype=torch.float32, device=dev)
    out = torch.empty((batch, n_heads, head_dim), dtype=k_cache.dtype, device=dev)
    extra = qkv_args or {}
    n_rows, a_rows, a_sub = extra.get("rows", (0, 0, 1))
    _attention_kernel[(n_chunks, batch * n_kv)](
        q, k_cache, v_cache, pos, m, lse, acc, _counters(dev, batch * n_kv), out,
        extra.get("qkv", q), extra.get("cos", q), extra.get("sin", q),
        max_len, n_kv, n_chunks, scale,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), out.stride(0), out.stride(1),
        n_rows, a_rows, a_sub, extra.get("cs_row", 0),
        R=rep, RP=triton.next_power_of_2(max(16, rep)), RC=triton.next_power_of_2(rep),
        HD=head_dim, HDP=triton.next_power_of_2(max(16, head_dim)),  # tl.dot's least size
        CHUNK=chunk, BN=min(chunk, BLOCK_N), BC=COMBINE_BLOCK,
        OG=extra.get("out_group", 0),
        PRECISION="ieee" if k_cache.dtype == torch.float32 else "tf32",  # a no-op on fp16
        QKV=qkv_args is not None, PARTS=extra.get("parts", 1), AXIS0=extra.get("axis0", False),
        num_warps=4, **pdl_options(k_cache),
    )
    return out


_COUNTERS: dict[tuple[torch.device, int], Tensor] = {}


def _counters(device: torch.device, n: int) -> Tensor:
    """The int32 [n] arrival counters of one launch's programs per kv head, zero between
    launches (the last program of each kv head sets its counter back). Kept per device and
    size, so a CUDA graph replays with the same ones; launches on one device run in order."""
    key = (device, n)
    if key not in _COUNTERS:
        _COUNTERS[key] = torch.zeros(n, dtype=torch.int32, device=device)
    return _COUNTERS[key]
