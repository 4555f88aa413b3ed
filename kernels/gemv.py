"""Fused dequant-GEMV for batch-1 decode, and the MoE decode built on it.

y[N] = W[N, K] @ x[K] straight from the packed layout (layout.py): each program
loads a [BA, BB] tile of int32 group words, dequantizes the 8-bit scale and zero
with their fp16 meta-meta in registers, and accumulates in fp32. No fp16
weight is ever written. Outputs are fp32 and are *added* (atomically, so the
K range can be split over programs) into a zeroed buffer.

A code becomes a float without an int->float convert (a quarter-rate
instruction on Hopper): its bits are moved to the top of an fp32 mantissa whose
exponent is 0, giving f = 1 + q / 2**bits exactly, and the 1 is taken out once
per group: (q - z) * s * x = f * (2**bits * s * x) - (1 + z / 2**bits) * (2**bits * s * x).
The 8-bit scale and zero codes go the same way (1 + code/256), against a meta-meta
table stored in the form that makes each of them one FMA (layout.meta_table).

axis 0 (the card's): a group's lanes are output rows a, a + A, ..., a + (g-1)A
of one column b, so x[b] is one vector per tile and each lane has its own
accumulator; a program handles one word (<= 16 lanes) of its groups.
axis 1: a group's lanes are g neighbours along K of one row, so all lanes feed
one accumulator and each lane reads its own x vector.

`fill_slots` serves offloaded experts (engine.offload): it copies the chosen
experts that are not resident from pinned host memory into staging slots, the
SMs reading the host buffer over the bus themselves (zero-copy), so the ids
stay on the device and the step stays one CUDA graph.
"""

# Triton kernels take their arguments positionally, and the unrolled lanes are many statements
# and branches on constexprs.
# ruff: noqa: PLR0917, PLR0915, PLR0912

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from mixdesk.kernels.layout import PackedWeight, lanes_per_word

ONE = 0x3F800000  # the bits of fp32 1.0: a zero exponent
ACT_BLOCK = 1024  # `_act_kernel`'s elements a program
# `_lane_major_kernel`'s: 8 programs for Mixtral's 4096 (one program, its stores scattered,
# made a decode step slower than the torch copy it replaced: 4.361 -> 4.437 ms at axis 1)
LANE_MAJOR_BLOCK = 512
# x prepared for one-word groups of 8 at axis 1 (`store_prepared`): XP_ROWS rows of B, the
# 8 lanes scaled for their shared shift, the groups' sums of x, and each dot's start
XP_ROWS = 10
_XP_ROWS = tl.constexpr(XP_ROWS)  # the same, for the kernels
PREP_BLOCK = 128  # `_prep_x_kernel`'s groups a program


@triton.jit
def _lane(w, J: tl.constexpr, BITS: tl.constexpr, one=ONE, LANES: tl.constexpr = 16,
          LPS: tl.constexpr = 1):
    """Lane J of int32 words w as fp32 1 + q / 2**(BITS*(k+1)) (exact, no convert).

    One shift puts the top lane of J's group at the top of the mantissa and the k-th lane
    below it BITS*k bits lower, so LPS lanes cost one shift and a LOP3 each; the caller
    scales lane k's sum by 2**(BITS*k). `one` is ONE passed in as a kernel argument: as an
    immediate, ptxas re-materialises the LOP3's second constant before every use."""
    GROUP_TOP: tl.constexpr = (J // LPS) * LPS + LPS - 1  # lanes J//LPS*LPS .. GROUP_TOP
    TOP: tl.constexpr = GROUP_TOP if GROUP_TOP < LANES else LANES - 1
    SH: tl.constexpr = 23 - BITS - BITS * TOP
    if SH >= 0:
        v = w << SH
    else:
        v = w >> (-SH)
    MASK: tl.constexpr = ((1 << BITS) - 1) << (23 - BITS - BITS * (TOP - J))
    return ((v & MASK) | one).to(tl.float32, bitcast=True)


@triton.jit
def _byte(v, POS: tl.constexpr, one=ONE):
    """The byte at bits POS..POS+7 of int32 v as fp32 1 + byte / 256 (exact, no convert)."""
    SH: tl.constexpr = 15 - POS
    if SH >= 0:
        u = v << SH
    else:
        u = v >> (-SH)
    return ((u & 0x7F8000) | one).to(tl.float32, bitcast=True)


@triton.jit
def _fetch_w(q_base, m_base, t_base, woff, mask, tix, bmask, T_LEN, INLINE: tl.constexpr):
    """Raw loads of one tile's weights: words, meta words, the 4 meta-meta vectors."""
    w = tl.load(q_base + woff, mask=mask, other=0)
    if INLINE:
        m = w
    else:
        m = tl.load(m_base + woff, mask=mask, other=0)
    s_mul = tl.load(t_base + tix, mask=bmask, other=0.0)
    s_add = tl.load(t_base + T_LEN + tix, mask=bmask, other=0.0)
    z_mul = tl.load(t_base + 2 * T_LEN + tix, mask=bmask, other=0.0)
    z_add = tl.load(t_base + 3 * T_LEN + tix, mask=bmask, other=0.0)
    return w, m, s_mul, s_add, z_mul, z_add


@triton.jit
def _fetch_x(x_base, x2_base, xidx, bmask, ACT: tl.constexpr):
    """x of one tile's columns (and h3, for the down projection)."""
    xv = tl.load(x_base + xidx, mask=bmask, other=0.0)
    if ACT:
        x2v = tl.load(x2_base + xidx, mask=bmask, other=0.0)
    else:
        x2v = xv
    return xv, x2v


@triton.jit
def _fetch(q_base, m_base, t_base, x_base, x2_base, woff, mask, tix, xidx, bmask, T_LEN,
           INLINE: tl.constexpr, ACT: tl.constexpr):
    """Raw loads of one tile: words, meta words, the 4 meta-meta vectors, x (and h3).

    Nothing here uses a loaded value, so a fetch for the next tile, issued before
    the current tile's math, keeps its loads in flight while that math runs."""
    w, m, s_mul, s_add, z_mul, z_add = _fetch_w(q_base, m_base, t_base, woff, mask, tix, bmask,
                                                T_LEN, INLINE)
    xv, x2v = _fetch_x(x_base, x2_base, xidx, bmask, ACT)
    return w, m, s_mul, s_add, z_mul, z_add, xv, x2v


@triton.jit
def pdl_launch_next(PDL: tl.constexpr):
    """Programmatic dependent launch (sm_90+, `pdl_options`): the next kernel's programs may
    start once every program of this one has called this; they wait in `pdl_wait`. A kernel
    calls it first thing, so in a decode graph the next one is resident before this ends."""
    if PDL:
        gdc_launch_dependents()


@triton.jit
def pdl_wait(PDL: tl.constexpr):
    """Wait until the kernel before this one has finished and its writes are visible. Every
    load of what an earlier kernel wrote, and every store, comes after this; only weights are
    read before it. (With `pdl_launch_next` first, the kernel before may itself still wait on
    the one before it: this wait covers both.)"""
    if PDL:
        gdc_wait()


@triton.jit
def _pdl_enter(PDL: tl.constexpr, WAIT_FIRST: tl.constexpr):
    """A GEMV's start under PDL. w1/w3 of a MoE (WAIT_FIRST) read the expert ids the kernel
    just before (the router) wrote, so they wait first, and let the next kernel start only
    after that wait: w2 (or, at axis 1, `_act_kernel` and then w2) may then read the ids (and
    its first weight tile) while w1/w3 still runs, the router being done. Every other GEMV
    lets the next kernel start at once and waits after loading its first weight tile."""
    if WAIT_FIRST:
        pdl_wait(PDL)
    pdl_launch_next(PDL)


@triton.jit
def _act(v, u, rw, ACT: tl.constexpr):
    """x itself, or silu(h1) * h3 * routing weight (the MoE down projection's input)."""
    v = v.to(tl.float32)
    if ACT:
        v = v * tl.sigmoid(v) * u.to(tl.float32) * rw
    return v


@triton.jit
def _program_mat(ids_ptr, rw_ptr, MOE: tl.constexpr, MATS: tl.constexpr):
    """(slot, matrix index, routing weight) of this program; MoE reads the expert on device."""
    pid1 = tl.program_id(1)
    if MOE:
        slot = pid1 // MATS
        eid = tl.load(ids_ptr + slot).to(tl.int64)
        mat = eid * MATS + pid1 % MATS
        rw = tl.load(rw_ptr + slot).to(tl.float32)
    else:
        slot = pid1 * 0
        mat = pid1.to(tl.int64)
        rw = 1.0
    return slot, mat, rw


@triton.jit
def _quarters(t, BA: tl.constexpr, BB: tl.constexpr):
    """Columns 4c, 4c+1, 4c+2, 4c+3 of a [BA, BB] tile as four [BA, BB // 4] tiles (each
    thread's 4 contiguous columns: no data moves)."""
    lo, hi = tl.split(tl.reshape(t, [BA, BB // 4, 2, 2]))
    t0, t1 = tl.split(lo)
    t2, t3 = tl.split(hi)
    return t0, t1, t2, t3


@triton.jit
def _acc_lane(acc, w, sxb, one, J: tl.constexpr, LANES: tl.constexpr, BITS: tl.constexpr,
              LPS: tl.constexpr):
    """acc [BA, BB // 4] += lane J of the tile's 4 column quarters w times their sxb: one FMA
    a word, a quarter of the accumulators a [BA, BB] sum would hold."""
    if J < LANES:
        acc += _lane(w[0], J, BITS, one, LANES, LPS) * sxb[0]
        acc += _lane(w[1], J, BITS, one, LANES, LPS) * sxb[1]
        acc += _lane(w[2], J, BITS, one, LANES, LPS) * sxb[2]
        acc += _lane(w[3], J, BITS, one, LANES, LPS) * sxb[3]
    return acc


@triton.jit
def _out_lane(out_base, a, amask, r, acc, accs, zsum, A, J: tl.constexpr, LANES: tl.constexpr,
              G: tl.constexpr, V: tl.constexpr, BITS: tl.constexpr, LPS: tl.constexpr):
    """Lane J's sums into y. acc = sum f*sxb with f = 1 + q/2**(BITS*(k+1)), accs = sum sxb:
    (acc - accs) * 2**(BITS*k) = sum q*sxb/2**BITS; k = 0 needs no accs (zsum has it)."""
    if J < LANES:
        lane = a * 0 + (r * V + J)  # [BA], so the mask stays a vector
        GROUP_TOP: tl.constexpr = (J // LPS) * LPS + LPS - 1
        K: tl.constexpr = (GROUP_TOP if GROUP_TOP < LANES else LANES - 1) - J
        if LPS == 1:
            tot = tl.sum(acc, 1) - zsum
        else:
            tot = tl.sum(acc - accs, 1) * (1 << (BITS * K)) - zsum
        tl.atomic_add(out_base + a + lane * A, tot, mask=amask & (lane < G), sem="relaxed")


@triton.jit
def _gemv_axis0_kernel(
    x_ptr, x2_ptr, rw_ptr, ids_ptr, q_ptr, m_ptr, t_ptr, out_ptr,
    A, B, P, NRB, SPLIT_LEN, T_LEN, X_SLOT, OUT_MAT, one,
    BITS: tl.constexpr, G: tl.constexpr, V: tl.constexpr, S: tl.constexpr,
    INLINE: tl.constexpr, MOE: tl.constexpr, MATS: tl.constexpr, ACT: tl.constexpr,
    BA: tl.constexpr, BB: tl.constexpr, SPLIT: tl.constexpr, PREFETCH: tl.constexpr,
    LPS: tl.constexpr, WAIT_FIRST: tl.constexpr = False, PDL: tl.constexpr = False,
):
    LANES: tl.constexpr = V if G > V else G
    pid = tl.program_id(0)
    sid = pid % SPLIT
    pid = pid // SPLIT
    r = pid % S  # which word of the group: lanes r*V .. r*V + LANES - 1
    pid = pid // S
    rb = pid % NRB
    rho = pid // NRB  # row residue mod P: every row of the tile reads table row rho
    _pdl_enter(PDL, WAIT_FIRST)
    slot, mat, rw = _program_mat(ids_ptr, rw_ptr, MOE, MATS)

    ab = A * B
    q_base = q_ptr + mat * S * ab + r * ab
    m_base = m_ptr + mat * ab
    t_base = t_ptr + mat * 4 * T_LEN
    x_base = x_ptr + slot * X_SLOT
    x2_base = x2_ptr + slot * X_SLOT
    out_base = out_ptr + tl.program_id(1) * OUT_MAT

    a = rho + P * (rb * BA + tl.arange(0, BA))  # [BA] group rows
    amask = a < A
    acc0 = tl.zeros([BA, BB // 4], tl.float32)
    acc1 = tl.zeros([BA, BB // 4], tl.float32)
    acc2 = tl.zeros([BA, BB // 4], tl.float32)
    acc3 = tl.zeros([BA, BB // 4], tl.float32)
    acc4 = tl.zeros([BA, BB // 4], tl.float32)
    acc5 = tl.zeros([BA, BB // 4], tl.float32)
    acc6 = tl.zeros([BA, BB // 4], tl.float32)
    acc7 = tl.zeros([BA, BB // 4], tl.float32)
    acc8 = tl.zeros([BA, BB // 4], tl.float32)
    acc9 = tl.zeros([BA, BB // 4], tl.float32)
    acc10 = tl.zeros([BA, BB // 4], tl.float32)
    acc11 = tl.zeros([BA, BB // 4], tl.float32)
    acc12 = tl.zeros([BA, BB // 4], tl.float32)
    acc13 = tl.zeros([BA, BB // 4], tl.float32)
    acc14 = tl.zeros([BA, BB // 4], tl.float32)
    acc15 = tl.zeros([BA, BB // 4], tl.float32)
    accz = tl.zeros([BA, BB // 4], tl.float32)
    accs = tl.zeros([BA, BB // 4], tl.float32)  # sum of sxb, for lanes below the top of a shift
    MPOS: tl.constexpr = 16 * INLINE  # where scale_q sits: the word's top half, or meta
    b_start = sid * SPLIT_LEN
    b_end = tl.minimum(b_start + SPLIT_LEN, B)
    b = b_start + tl.arange(0, BB)
    bmask = b < b_end
    # the first tile's weights are loaded while the kernel before may still run (PDL): they
    # are not its output; x is
    w, m, ss, so, zs, zo = _fetch_w(q_base, m_base, t_base, a[:, None] * B + b[None, :],
                                    amask[:, None] & bmask[None, :], rho * B + b, bmask,
                                    T_LEN, INLINE)
    if not WAIT_FIRST:
        pdl_wait(PDL)
    xv, x2v = _fetch_x(x_base, x2_base, b, bmask, ACT)
    for b0 in range(b_start, b_start + SPLIT_LEN, BB):
        bn = b0 + BB + tl.arange(0, BB)  # the next tile; all masked off after the last
        bnmask = bn < b_end
        if PREFETCH:
            w_n, m_n, ss_n, so_n, zs_n, zo_n, xv_n, x2v_n = _fetch(
                q_base, m_base, t_base, x_base, x2_base, a[:, None] * B + bn[None, :],
                amask[:, None] & bnmask[None, :], rho * B + bn, bn, bnmask, T_LEN, INLINE, ACT)
        xb = _act(xv, x2v, rw, ACT)
        m = m.to(tl.int32)
        # sxb = 2**BITS * scale * x, one FMA a group; zz = 1 + zero / 2**BITS
        sxb = _quarters(_byte(m, MPOS, one) * (ss * xb)[None, :] + (so * xb)[None, :], BA, BB)
        zz = _quarters(_byte(m, MPOS + 8, one) * zs[None, :] + zo[None, :], BA, BB)
        for i in tl.static_range(4):  # the accumulators hold one column in 4
            accz += zz[i] * sxb[i]
            if LPS > 1:
                accs += sxb[i]
        wq = _quarters(w, BA, BB)
        acc0 = _acc_lane(acc0, wq, sxb, one, 0, LANES, BITS, LPS)
        acc1 = _acc_lane(acc1, wq, sxb, one, 1, LANES, BITS, LPS)
        acc2 = _acc_lane(acc2, wq, sxb, one, 2, LANES, BITS, LPS)
        acc3 = _acc_lane(acc3, wq, sxb, one, 3, LANES, BITS, LPS)
        acc4 = _acc_lane(acc4, wq, sxb, one, 4, LANES, BITS, LPS)
        acc5 = _acc_lane(acc5, wq, sxb, one, 5, LANES, BITS, LPS)
        acc6 = _acc_lane(acc6, wq, sxb, one, 6, LANES, BITS, LPS)
        acc7 = _acc_lane(acc7, wq, sxb, one, 7, LANES, BITS, LPS)
        acc8 = _acc_lane(acc8, wq, sxb, one, 8, LANES, BITS, LPS)
        acc9 = _acc_lane(acc9, wq, sxb, one, 9, LANES, BITS, LPS)
        acc10 = _acc_lane(acc10, wq, sxb, one, 10, LANES, BITS, LPS)
        acc11 = _acc_lane(acc11, wq, sxb, one, 11, LANES, BITS, LPS)
        acc12 = _acc_lane(acc12, wq, sxb, one, 12, LANES, BITS, LPS)
        acc13 = _acc_lane(acc13, wq, sxb, one, 13, LANES, BITS, LPS)
        acc14 = _acc_lane(acc14, wq, sxb, one, 14, LANES, BITS, LPS)
        acc15 = _acc_lane(acc15, wq, sxb, one, 15, LANES, BITS, LPS)
        if PREFETCH:
            w, m, ss, so, zs, zo, xv, x2v = w_n, m_n, ss_n, so_n, zs_n, zo_n, xv_n, x2v_n
        else:
            w, m, ss, so, zs, zo, xv, x2v = _fetch(
                q_base, m_base, t_base, x_base, x2_base, a[:, None] * B + bn[None, :],
                amask[:, None] & bnmask[None, :], rho * B + bn, bn, bnmask, T_LEN, INLINE, ACT)
    zsum = tl.sum(accz - accs, 1) if LPS > 1 else tl.sum(accz, 1)  # sum z * scale * x
    _out_lane(out_base, a, amask, r, acc0, accs, zsum, A, 0, LANES, G, V, BITS, LPS)
    _out_lane(out_base, a, amask, r, acc1, accs, zsum, A, 1, LANES, G, V, BITS, LPS)
    _out_lane(out_base, a, amask, r, acc2, accs, zsum, A, 2, LANES, G, V, BITS, LPS)
    _out_lane(out_base, a, amask, r, acc3, accs, zsum, A, 3, LANES, G, V, BITS, LPS)
    _out_lane(out_base, a, amask, r, acc4, accs, zsum, A, 4, LANES, G, V, BITS, LPS)
    _out_lane(out_base, a, amask, r, acc5, accs, zsum, A, 5, LANES, G, V, BITS, LPS)
    _out_lane(out_base, a, amask, r, acc6, accs, zsum, A, 6, LANES, G, V, BITS, LPS)
    _out_lane(out_base, a, amask, r, acc7, accs, zsum, A, 7, LANES, G, V, BITS, LPS)
    _out_lane(out_base, a, amask, r, acc8, accs, zsum, A, 8, LANES, G, V, BITS, LPS)
    _out_lane(out_base, a, amask, r, acc9, accs, zsum, A, 9, LANES, G, V, BITS, LPS)
    _out_lane(out_base, a, amask, r, acc10, accs, zsum, A, 10, LANES, G, V, BITS, LPS)
    _out_lane(out_base, a, amask, r, acc11, accs, zsum, A, 11, LANES, G, V, BITS, LPS)
    _out_lane(out_base, a, amask, r, acc12, accs, zsum, A, 12, LANES, G, V, BITS, LPS)
    _out_lane(out_base, a, amask, r, acc13, accs, zsum, A, 13, LANES, G, V, BITS, LPS)
    _out_lane(out_base, a, amask, r, acc14, accs, zsum, A, 14, LANES, G, V, BITS, LPS)
    _out_lane(out_base, a, amask, r, acc15, accs, zsum, A, 15, LANES, G, V, BITS, LPS)


@triton.jit
def _x_lane(words, J: tl.constexpr, PER: tl.constexpr, DT: tl.constexpr):
    """Element J of the 8 x of each column, from the column's int64 words (PER elements a
    word) as fp32."""
    v = words[J // PER]
    if PER == 2:  # fp32
        part = (v >> (32 * (J % 2))).to(tl.int32)
        return part.to(tl.float32, bitcast=True)
    part = (v >> (32 * ((J % 4) // 2))).to(tl.int32)
    if DT == tl.bfloat16:  # bf16 is the top half of an fp32
        top = part << 16 if J % 2 == 0 else part & -65536
        return top.to(tl.float32, bitcast=True)
    half = (part >> (16 * (J % 2))) & 0xFFFF
    return half.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _x8(x_base, first, bmask):
    """x[first .. first+7] of each column as 8 fp32 [BB] vectors (first a multiple of 8): 2
    (fp16, bf16) or 4 (fp32) int64 loads a column instead of 8 scalar ones, the lanes taken
    apart in registers."""
    DT: tl.constexpr = x_base.dtype.element_ty
    PER: tl.constexpr = 2 if DT == tl.float32 else 4
    words_ptr = x_base.to(tl.pointer_type(tl.int64), bitcast=True) + first // PER
    w0 = tl.load(words_ptr, mask=bmask, other=0)
    w1 = tl.load(words_ptr + 1, mask=bmask, other=0)
    if PER == 2:
        w2 = tl.load(words_ptr + 2, mask=bmask, other=0)
        w3 = tl.load(words_ptr + 3, mask=bmask, other=0)
    else:
        w2 = w0
        w3 = w1
    words = (w0, w1, w2, w3)
    return (_x_lane(words, 0, PER, DT), _x_lane(words, 1, PER, DT), _x_lane(words, 2, PER, DT),
            _x_lane(words, 3, PER, DT), _x_lane(words, 4, PER, DT), _x_lane(words, 5, PER, DT),
            _x_lane(words, 6, PER, DT), _x_lane(words, 7, PER, DT))


@triton.jit
def store_prepared(xp_base, b, bmask, v, B, BITS: tl.constexpr, LPS: tl.constexpr):
    """x of group columns b (v [BLOCK, 8] fp32) stored as the axis-1 kernel reads it (`XP`):
    row j < 8 is lane j times 2**(BITS*k), k its place below the top lane of its shift group
    (`_lane` decodes it as 1 + q/2**(BITS*(k+1))), row 8 the group's sum of x, row 9
    sum(x) - sum(row j): the start of a dot sum_j f_j x'_j, which then comes to
    sum(x) + sum_j q_j x_j / 2**BITS."""
    j = tl.arange(0, 8)
    top = tl.minimum((j // LPS) * LPS + LPS - 1, 7)
    mul = ((127 + BITS * (top - j)) << 23).to(tl.float32, bitcast=True)  # exact powers of 2
    scaled = v * mul[None, :]
    tl.store(xp_base + j[None, :] * B + b[:, None], scaled, mask=bmask[:, None])
    total = tl.sum(v, 1)
    tl.store(xp_base + 8 * B + b, total, mask=bmask)
    tl.store(xp_base + 9 * B + b, total - tl.sum(scaled, 1), mask=bmask)


@triton.jit
def _prep_x_kernel(x_ptr, xp_ptr, B, BITS: tl.constexpr, LPS: tl.constexpr,
                   BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    """x [8B] prepared (`store_prepared`) into xp [XP_ROWS, B]."""
    pdl_launch_next(PDL)
    b = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    bmask = b < B
    pdl_wait(PDL)
    v = tl.load(x_ptr + b[:, None] * 8 + tl.arange(0, 8)[None, :], mask=bmask[:, None],
                other=0.0).to(tl.float32)
    store_prepared(xp_ptr, b, bmask, v, B, BITS, LPS)


@triton.jit
def _gemv_axis1_kernel(
    x_ptr, x2_ptr,  # noqa: ARG001 - the axis-0 kernel's h3; axis 1 takes w2's input computed
    rw_ptr, ids_ptr, q_ptr, m_ptr, t_ptr, out_ptr,
    A, B, P, NRB, SPLIT_LEN, T_LEN, X_SLOT, OUT_MAT, one,
    BITS: tl.constexpr, G: tl.constexpr, V: tl.constexpr, S: tl.constexpr,
    INLINE: tl.constexpr, MOE: tl.constexpr, MATS: tl.constexpr, ACT: tl.constexpr,
    BA: tl.constexpr, BB: tl.constexpr, SPLIT: tl.constexpr, PREFETCH: tl.constexpr,
    LPS: tl.constexpr,  # lanes a shift with x prepared (XP); else one shift a lane
    XT: tl.constexpr = False, X8: tl.constexpr = False, XP: tl.constexpr = False,
    WAIT_FIRST: tl.constexpr = False, PDL: tl.constexpr = False,
):
    """XT: x comes lane-major, lane m of group column b at m * B + b (`_launch` transposes it
    for groups of several words), so a lane's x is one coalesced load, not a gather at G apart.
    X8 (a group of 8 lanes in one word, x on 8 bytes): its 8 x are read as int64 words.
    XP (a group of 8 lanes in one word): x comes prepared (`store_prepared`, XP_ROWS rows of
    B a slot), its 8 lanes scaled so that LPS lanes share a shift, with the groups' sums.
    No ACT: `moe_decode` hands w2 its input computed (`_act_kernel`)."""
    tl.static_assert(not ACT, "axis 1 takes x computed: moe_decode's _act_kernel")
    LANES: tl.constexpr = V if G > V else G
    pid = tl.program_id(0)
    sid = pid % SPLIT
    pid = pid // SPLIT
    rb = pid % NRB
    rho = pid // NRB
    _pdl_enter(PDL, WAIT_FIRST)
    slot, mat, rw = _program_mat(ids_ptr, rw_ptr, MOE, MATS)

    ab = A * B
    q_base = q_ptr + mat * S * ab
    m_base = m_ptr + mat * ab
    t_base = t_ptr + mat * 4 * T_LEN
    x_base = x_ptr + slot * X_SLOT
    out_base = out_ptr + tl.program_id(1) * OUT_MAT

    a = rho + P * (rb * BA + tl.arange(0, BA))  # [BA] output rows
    amask = a < A
    acc = tl.zeros([BA, BB], tl.float32)
    MPOS: tl.constexpr = 16 * INLINE  # where scale_q sits: the word's top half, or meta
    b_start = sid * SPLIT_LEN
    b_end = tl.minimum(b_start + SPLIT_LEN, B)
    b = b_start + tl.arange(0, BB)
    bmask = b < b_end
    # plane 0, meta and meta-meta of the first tile (x is read per lane below, after the
    # kernel before has finished: pdl_wait)
    w, m, ss, so, zs, zo = _fetch_w(q_base, m_base, t_base, a[:, None] * B + b[None, :],
                                    amask[:, None] & bmask[None, :], rho * B + b, bmask,
                                    T_LEN, INLINE)
    if not WAIT_FIRST:
        pdl_wait(PDL)
    for b0 in range(b_start, b_start + SPLIT_LEN, BB):
        b = b0 + tl.arange(0, BB)
        bmask = b < b_end
        mask = amask[:, None] & bmask[None, :]
        woff = a[:, None] * B + b[None, :]
        bn = b + BB  # the next tile; all masked off after the last
        bnmask = bn < b_end
        if PREFETCH:  # weights only: x is read per word below
            w_n, m_n, ss_n, so_n, zs_n, zo_n = _fetch_w(
                q_base, m_base, t_base, a[:, None] * B + bn[None, :],
                amask[:, None] & bnmask[None, :], rho * B + bn, bnmask, T_LEN, INLINE)
        m = m.to(tl.int32)
        scale = _byte(m, MPOS, one) * ss[None, :] + so[None, :]  # 2**BITS * scale
        zterm = _byte(m, MPOS + 8, one) * zs[None, :] + zo[None, :]  # 1 + zero / 2**BITS
        if XP:  # x prepared: dot = sum(x) + sum_j q_j x_j / 2**BITS, LPS lanes a shift
            xr = x_base + b
            xsum = tl.load(xr + 8 * B, mask=bmask, other=0.0)
            dot = tl.broadcast_to(tl.load(xr + 9 * B, mask=bmask, other=0.0)[None, :], [BA, BB])
            for j in tl.static_range(8):
                xj = tl.load(xr + j * B, mask=bmask, other=0.0)
                dot += _lane(w, j, BITS, one, 8, LPS) * xj[None, :]
        else:
            dot = tl.zeros([BA, BB], tl.float32)  # sum_j f_j x_j of each group
            xsum = tl.zeros([BB], tl.float32)  # sum_j x_j of each group
        for r in tl.static_range(0 if XP else S):
            if r > 0:
                w = tl.load(q_base + r * ab + woff, mask=mask, other=0)
            if X8:  # the word's 8 x in 2 or 4 int64 loads a column, not 8 scalar ones
                x8 = _x8(x_base, b * G + r * V, bmask)
            for j in tl.static_range(V):
                if j < LANES:
                    if r * V + j < G:
                        if X8:
                            xj = x8[j]
                        else:
                            xidx = (r * V + j) * B + b if XT else b * G + (r * V + j)
                            xj = tl.load(x_base + xidx, mask=bmask, other=0.0).to(tl.float32)
                        dot += _lane(w, j, BITS, one) * xj[None, :]
                        xsum += xj
        acc += scale * (dot - zterm * xsum[None, :])
        if PREFETCH:
            w, m, ss, so, zs, zo = w_n, m_n, ss_n, so_n, zs_n, zo_n
        else:
            w, m, ss, so, zs, zo = _fetch_w(
                q_base, m_base, t_base, a[:, None] * B + bn[None, :],
                amask[:, None] & bnmask[None, :], rho * B + bn, bnmask, T_LEN, INLINE)
    tl.atomic_add(out_base + a, tl.sum(acc, 1), mask=amask, sem="relaxed")


@triton.jit
def _act_kernel(h_ptr, rw_ptr, g_ptr, F, BLOCK: tl.constexpr, XP: tl.constexpr = False,
                BITS: tl.constexpr = 2, LPS: tl.constexpr = 1, PDL: tl.constexpr = False):
    """g[slot] = silu(h1) * h3 * routing weight of a slot's w1/w3 output h[slot] = (h1, h3):
    w2's input at axis 1 (`moe_decode`), computed once instead of in every w2 program. XP:
    written prepared (`store_prepared`, XP_ROWS rows of F/8 a slot), BLOCK groups a program."""
    pdl_launch_next(PDL)
    slot = tl.program_id(1)
    if XP:
        b = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        bmask = b < F // 8
        i = b[:, None] * 8 + tl.arange(0, 8)[None, :]
        mask = bmask[:, None]
    else:
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = i < F
    pdl_wait(PDL)
    h1 = tl.load(h_ptr + slot * 2 * F + i, mask=mask, other=0.0)
    h3 = tl.load(h_ptr + slot * 2 * F + F + i, mask=mask, other=0.0)
    g = _act(h1, h3, tl.load(rw_ptr + slot), True)
    if XP:
        store_prepared(g_ptr + slot * _XP_ROWS * (F // 8), b, bmask, g, F // 8, BITS, LPS)
    else:
        tl.store(g_ptr + slot * F + i, g, mask=mask)


@triton.jit
def _lane_major_kernel(x_ptr, xt_ptr, K, B, G: tl.constexpr, BLOCK: tl.constexpr,
                       PDL: tl.constexpr = False):
    """xt[m * B + b] = x[b * G + m]: x lane-major for the axis-1 GEMV (XT), in the decode
    graph's PDL chain. A torch copy there starts only after the kernel before has ended, and
    the GEMV after it only after the copy has: a decode step at axis 1 (two copies a layer)
    4.346 -> 4.139 ms on an H100, 4.313 without PDL; with no copy at all (wrong products,
    timing only) 4.064 (tests/bench/results/h100-s12-xt/)."""
    pdl_launch_next(PDL)
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # xt's index: stores coalesce
    mask = o < K
    pdl_wait(PDL)
    v = tl.load(x_ptr + (o % B) * G + o // B, mask=mask)
    tl.store(xt_ptr + o, v, mask=mask)


@triton.jit
def _fill_slots_kernel(src, dst, ids_ptr, pos_ptr, first, row_len,
                       BLOCK: tl.constexpr, ITERS: tl.constexpr):
    """Program (c, j): chunk c of row ids[j] of src into row pos[j] of dst, if pos[j] >= first."""
    j = tl.program_id(1)
    p = tl.load(pos_ptr + j).to(tl.int64)
    e = tl.load(ids_ptr + j).to(tl.int64)
    n_iter = tl.where(p >= first, ITERS, 0)  # a resident expert: nothing to copy
    start = tl.program_id(0).to(tl.int64) * BLOCK * ITERS
    for i in range(n_iter):
        off = start + i * BLOCK + tl.arange(0, BLOCK)
        mask = off < row_len
        tl.store(dst + p * row_len + off, tl.load(src + e * row_len + off, mask=mask),
                 mask=mask)


@triton.jit
def _dequant_kernel(
    q_ptr, m_ptr, t_ptr, out_ptr, A, B, P, T_LEN, N, K,
    BITS: tl.constexpr, G: tl.constexpr, V: tl.constexpr, S: tl.constexpr,
    INLINE: tl.constexpr, AXIS: tl.constexpr, BA: tl.constexpr, BB: tl.constexpr,
):
    """W[N, K] of matrix program_id(2), written in out's dtype: prefill's cuBLAS input.

    Same arithmetic as the GEMVs, (f - (1 + z/2**BITS)) * 2**BITS * scale = (q - z) * scale,
    in fp32, rounded once on the store. axis 0 stores each lane as a run of BB columns of
    one row (coalesced); axis 1 decodes a [BA, BB, G] block (lanes along K) and stores
    BB*G contiguous columns of each row."""
    LANES: tl.constexpr = V if G > V else G
    mat = tl.program_id(2).to(tl.int64)
    a = tl.program_id(0) * BA + tl.arange(0, BA)  # [BA] group rows
    b = tl.program_id(1) * BB + tl.arange(0, BB)  # [BB] group columns
    mask = (a < A)[:, None] & (b < B)[None, :]
    ab = A * B
    woff = a[:, None] * B + b[None, :]
    q_base = q_ptr + mat * S * ab
    t_base = t_ptr + mat * 4 * T_LEN
    out_base = out_ptr + mat * N * K
    w = tl.load(q_base + woff, mask=mask, other=0)
    if INLINE:
        m = w
    else:
        m = tl.load(m_ptr + mat * ab + woff, mask=mask, other=0).to(tl.int32)
    tix = (a % P)[:, None] * B + b[None, :]  # the group's meta-meta column
    ss = tl.load(t_base + tix, mask=mask, other=0.0)
    so = tl.load(t_base + T_LEN + tix, mask=mask, other=0.0)
    zs = tl.load(t_base + 2 * T_LEN + tix, mask=mask, other=0.0)
    zo = tl.load(t_base + 3 * T_LEN + tix, mask=mask, other=0.0)
    MPOS: tl.constexpr = 16 * INLINE
    scale = _byte(m, MPOS) * ss + so  # 2**BITS * scale
    zz = _byte(m, MPOS + 8) * zs + zo  # 1 + zero / 2**BITS
    if AXIS == 1:  # a group is G neighbours along K: decode [BA, BB, G] and store whole rows
        lane = tl.arange(0, G)
        w3 = tl.load(q_base + (lane // V)[None, None, :] * ab + woff[:, :, None],
                     mask=mask[:, :, None], other=0)  # each word read by its V lanes
        code = (w3 >> (BITS * (lane % V))[None, None, :]) & ((1 << BITS) - 1)
        f = code.to(tl.float32) * (1.0 / (1 << BITS)) + 1.0  # exact, as _lane gives it
        val = (f - zz[:, :, None]) * scale[:, :, None]
        off = a[:, None, None] * K + (b[None, :, None] * G + lane[None, None, :])
        tl.store(out_base + off, val.to(out_ptr.dtype.element_ty), mask=mask[:, :, None])
        return
    for r in tl.static_range(S):
        if r > 0:
            w = tl.load(q_base + r * ab + woff, mask=mask, other=0)
        for j in tl.static_range(V):
            if j < LANES:
                if r * V + j < G:
                    val = (_lane(w, j, BITS) - zz) * scale
                    off = (a + (r * V + j) * A)[:, None] * K + b[None, :]
                    tl.store(out_base + off, val.to(out_ptr.dtype.element_ty), mask=mask)


@dataclass(frozen=True)
class Config:
    """Tile shape of one launch: [block_rows, block_cols] groups, K split, warps."""

    block_rows: int
    block_cols: int
    split: int
    num_warps: int = 4
    prefetch: bool = True
    lanes_per_shift: int = 1  # axis 0: lanes decoded from one shift, <= 8 // bits (_lane)
    max_registers: int = 0  # a cap on registers a thread (ptxas maxnreg) on a GPU; 0: none


@functools.cache
def _sm_count(device_index: int) -> int:
    return int(torch.cuda.get_device_properties(device_index).multi_processor_count)


def _pow2_at_most(n: int, cap: int) -> int:
    return min(cap, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


def _residue_rows(pw: PackedWeight) -> tuple[int, int]:
    """(residues that occur, rows per residue)."""
    a_rows, _ = pw.grid
    residues = min(pw.period, a_rows)
    return residues, math.ceil(a_rows / residues)


# Tile shapes measured best on an H100 (tests/bench/gpu_check.sh --sweep; docs/PERFORMANCE.md),
# by (bits, group, axis, N, K): (rows, cols, warps, prefetch[, programs per SM[, register cap]]).
# The K split is recomputed for the number of matrices a launch covers, aiming at that many
# programs per SM (4 when not given; `split_for`); no cap when none is given.
# Measured 2026-11-22, run 3 in docs/PERFORMANCE.md (tests/bench/results/h100-run3.json).
Tile = (tuple[int, int, int, bool] | tuple[int, int, int, bool, int]
        | tuple[int, int, int, bool, int, int])
TUNED: dict[tuple[int, int, int, int, int], Tile] = {
    (2, 8, 0, 14336, 4096): (2, 512, 4, False),
    (2, 8, 0, 4096, 14336): (16, 128, 8, False),
    # q/k/v as one launch of 6 [1024, 4096] matrices (q split in 4, engine.fastpath.fuse_qkv),
    # then o: swept 2026-11-23 as a decode step runs them (tests/bench/attn_sweep.py,
    # tests/bench/results/h100-s6-attn-sweep.json): 24.2 -> 21.4 us a layer
    # Re-swept 2026-11-23 with a quarter of the accumulators (`_quarters`;
    # tests/bench/results/h100-s7-attn-sweep.json): 22.7 -> 19.6 us a layer
    # One warp, 128 columns (a warp's 32 threads x 4): the [cols] meta-meta and x vectors load
    # straight into the tile's columns; 4 warps on 128 columns took each through shared memory
    # (8 barriers a tile). attn_sweep.py --tiles (tests/bench/results/h100-s12-warps/):
    # 17.86 -> 16.73 us a layer; a decode step 3.715 -> 3.650 ms in one process
    (4, 64, 0, 4096, 4096): (4, 128, 1, False, 16),
    (4, 64, 0, 1024, 4096): (4, 128, 1, False, 16),
    (2, 8, 1, 14336, 4096): (16, 128, 4, False),
    (2, 8, 1, 4096, 14336): (64, 32, 4, True),
    # o at axis 1 beside the stacked q/k/v launch (attn_sweep.py --axis 1,
    # tests/bench/results/h100-s6-attn-sweep-axis1.json): 37.7 -> 35.8 us a layer, best again
    # with x lane-major
    (4, 64, 1, 4096, 4096): (32, 32, 4, True),
    # q/k/v stacked at axis 1, x lane-major (XT): attn_sweep.py --axis 1,
    # tests/bench/results/h100-s6-attn-sweep-axis1-xt.json: with o, 27.4 -> 24.0 us a layer
    (4, 64, 1, 1024, 4096): (8, 64, 4, True),
    (2, 16, 0, 14336, 4096): (1, 512, 4, True),
    (3, 64, 0, 14336, 4096): (4, 256, 4, False),
    (4, 64, 0, 14336, 4096): (4, 256, 4, True),
}


# Inside `moe_decode` a launch covers top_k experts (w1/w3: 2 matrices each), so the best tile
# differs from the one-matrix sweep above: measured 2026-11-22 on an H100
# (tests/bench/moe_sweep.py, tests/bench/results/h100-moe-sweep.json), top-2 at the Mixtral
# shape: 145.7 us with TUNED's tiles, 117.1 us with these (1247 -> 1552 GB/s). Axis 1, swept
# 2026-11-23 (moe_sweep.py --axis 1, tests/bench/results/h100-s6-moe-sweep-axis1.json): 167.0 us
# with TUNED's tiles, 109.0 us with these (1088 -> 1667 GB/s).
TUNED_MOE: dict[tuple[int, int, int, int, int], Tile] = {
    # axis 0 again with a quarter of the accumulators (`_quarters`; moe_sweep.py --lanes 4,
    # tests/bench/results/h100-s7-moe-sweep.json): 106.4 -> 88.1 us (1707 -> 2062 GB/s).
    # One warp, (2, 128, 1, no prefetch, 32 a SM), swept faster (86.3 -> 84.2 us) but made the
    # decode step slower, 3.801 -> 3.812 ms (tests/bench/results/h100-s12-warps/)
    (2, 8, 0, 14336, 4096): (8, 128, 4, True, 16),
    # w2 with registers capped at 112 a thread (`Config.max_registers`; moe_sweep.py --variants,
    # tests/bench/results/h100-s10-regs/): MoE 87.1 -> 85.7 us, a decode step 3.839/3.844 ->
    # 3.815/3.820 ms (two rounds each, alternating); caps that spill (96, 80) were slower
    (2, 8, 0, 4096, 14336): (32, 64, 4, False, 4, 112),
    # axis 1 with x prepared (`prepare_x`, `store_prepared`: 4 lanes a shift, the groups' sums
    # given), swept again (moe_sweep.py --axis 1, tests/bench/results/h100-s13-xp/): the MoE
    # 97.0 us (X8, (64, 32, 4, True, 8) and (16, 128, 4, True)) -> 87.5 us. X8's w2 tile
    # (16, 128, 4) took 120.6 us with it: its loop moves vectors through shared memory.
    # w1/w3 at (64, 64, 8) was slower in the decode step (3.7137 -> 3.7606 ms,
    # tests/bench/results/h100-s13-tiles/). w2 at (128, 32, 4, no prefetch, 4 a SM): faster in
    # the decode step in both one-process A/Bs, 3.7137 -> 3.7001 ms (h100-s13-tiles/) and
    # 3.7329 -> 3.7268 ms over 7 rounds, each round faster (h100-s14-ab/). (Session 13's bench
    # runs with it, 59.94% and 59.52% of the floor, were on other machines than those of the
    # shipped tile's 60.18-60.73%: a machine moves the step by ~1.3%.)
    (2, 8, 1, 14336, 4096): (32, 64, 4, True, 4),
    (2, 8, 1, 4096, 14336): (128, 32, 4, False, 4),
}


def split_for(pw: PackedWeight, block_rows: int, block_cols: int, launches: int,
              device: torch.device, programs_per_sm: int = 4) -> int:
    """K split that gives ~`programs_per_sm` programs per SM (atomics add the parts)."""
    _, b_cols = pw.grid
    residues, rows = _residue_rows(pw)
    planes = pw.words if pw.axis == 0 else 1
    programs = residues * math.ceil(rows / block_rows) * planes * launches
    sms = _sm_count(device.index or 0) if device.type == "cuda" else 4
    return max(1, min(math.ceil(programs_per_sm * sms / programs),
                      math.ceil(b_cols / block_cols)))


# axis 0: lanes that share a shift (_lane). Lane k below the top of its group decodes as
# 1 + q/2**(bits*(k+1)), so its sum keeps 24 - bits*(k+1) bits past the 1 it cancels; bits*LPS
# is held to <= 8. Measured in the interpreter (256x512, fp16 x): relative error 6e-7 (LPS 1),
# 7e-7 (2), 7e-6 (4) at 2-bit g8; 2e-6 at 4-bit g64 with 2. SASS of the w1/w3 loop (sm_90,
# 8 words a thread): 377 instructions a tile with one shift a lane and the OR constant an
# immediate, 336 with it an argument, 293 with 4 lanes a shift. H100 (moe_sweep.py, top-2 MoE
# at the Mixtral shape): 143.6 us with 1, 136.8 with 4 at the same tiles; 106.4 at the best.
LANES_PER_SHIFT = {2: 4}  # 4-bit: no gain measured (q/k/v/o 35.8 us a layer with 2, 35.4 with 1)


def default_config(pw: PackedWeight, launches: int, device: torch.device, *,
                   table: dict[tuple[int, int, int, int, int], Tile] | None = None) -> Config:
    """The measured tile for this shape if there is one (in `table`, then in TUNED), else one
    that keeps ~8 words and <= ~140 accumulators per thread; K is split so that the programs
    fill the GPU."""
    key = (pw.bits, pw.group, pw.axis, *pw.shape)
    tuned = (table or {}).get(key) or TUNED.get(key)
    lps = LANES_PER_SHIFT.get(pw.bits, 1) if pw.axis == 0 else 1
    if tuned is not None:
        rows, cols, warps, prefetch, *extra = tuned
        per_sm = extra[0] if extra else 4
        max_registers = extra[1] if len(extra) > 1 else 0
        split = split_for(pw, rows, cols, launches, device, programs_per_sm=per_sm)
        return Config(rows, cols, split, warps, bool(prefetch), lps, max_registers)
    _, b_cols = pw.grid
    _, rows_per_residue = _residue_rows(pw)
    lanes = min(pw.group, lanes_per_word(pw.bits))
    tile = 512 if (pw.axis == 0 and lanes > 8) else 1024
    cap_cols = 512 if pw.axis == 0 else 128
    block_cols = max(_pow2_at_most(b_cols, cap_cols), 4 if pw.axis == 0 else 1)
    block_rows = _pow2_at_most(rows_per_residue, max(1, tile // block_cols))
    return Config(block_rows, block_cols,
                  split_for(pw, block_rows, block_cols, launches, device), lanes_per_shift=lps)


def _launch(x: Tensor, x2: Tensor, rw: Tensor, ids: Tensor, pw: PackedWeight, out: Tensor, *,
            launches: int, moe: bool, mats: int, act: bool, x_slot: int, out_mat: int,
            config: Config | None, wait_first: bool = False, x_lane_major: bool = False,
            x_prepared: bool = False) -> None:
    cfg = config or default_config(pw, launches, x.device)
    if pw.axis == 0 and cfg.block_cols % 4:
        raise ValueError(f"axis 0 takes block_cols in multiples of 4, got {cfg.block_cols}")
    a_rows, b_cols = pw.grid
    residues, rows = _residue_rows(pw)
    nrb = math.ceil(rows / cfg.block_rows)
    split_len = math.ceil(math.ceil(b_cols / cfg.split) / cfg.block_cols) * cfg.block_cols
    split = math.ceil(b_cols / split_len)
    planes = pw.words if pw.axis == 0 else 1
    grid = (residues * nrb * planes * split, launches)
    kernel = _gemv_axis0_kernel if pw.axis == 0 else _gemv_axis1_kernel
    meta = pw.codes if pw.meta is None else pw.meta  # unread when inline
    extra = {}
    if reads_lane_major(pw) and not (moe or act):  # x lane-major (XT): copied unless given so
        x, extra = x if x_lane_major else _lane_major(x, b_cols, pw.group), {"XT": True}
    elif x_prepared:  # x prepared (XP), by moe_decode's launch or the kernel before
        extra = {"XP": True}
    elif (pw.axis == 1 and pw.words == 1 and min(pw.group, lanes_per_word(pw.bits)) == 8
          and _aligned8(x, x_slot)):  # 8 lanes in one word: x as int64 words (X8)
        extra = {"X8": True}
    kernel[grid](
        x, x2, rw, ids, pw.codes, meta, pw.table, out,
        a_rows, b_cols, pw.period, nrb, split_len, pw.table.shape[2], x_slot, out_mat, ONE,
        BITS=pw.bits, G=pw.group, V=lanes_per_word(pw.bits), S=pw.words,
        INLINE=pw.meta is None, MOE=moe, MATS=mats, ACT=act, WAIT_FIRST=wait_first,
        BA=cfg.block_rows, BB=cfg.block_cols, SPLIT=split, PREFETCH=cfg.prefetch,
        LPS=(max(1, min(cfg.lanes_per_shift, 8 // pw.bits)) if pw.axis == 0
             else prepared_lanes_per_shift(pw.bits) if x_prepared else 1),
        num_warps=cfg.num_warps, **extra, **pdl_options(x), **_register_cap(cfg, x),
    )


def _lane_major(x: Tensor, b_cols: int, group: int) -> Tensor:
    """x [b_cols * group] as [group, b_cols]: lane m of group column b at m * b_cols + b."""
    xt = torch.empty_like(x)
    _lane_major_kernel[(triton.cdiv(x.numel(), LANE_MAJOR_BLOCK),)](
        x, xt, x.numel(), b_cols, G=group, BLOCK=LANE_MAJOR_BLOCK, num_warps=4,
        **pdl_options(x))
    return xt


def reads_prepared(pw: PackedWeight) -> bool:
    """Whether `moe_decode` reads x prepared (`prepare_x`) for `pw` as its w13 or w2: groups of
    8 in one word at axis 1 (the experts' 2-bit g8). `gemv` reads such a weight's x as it is
    (as int64 words, `X8`), which costs no launch to prepare it."""
    return pw.axis == 1 and pw.group == 8 and pw.words == 1


def prepared_lanes_per_shift(bits: int) -> int:
    """Lanes that share a shift where x comes prepared (`prepare_x` scales lane k below the
    top of its shift group by 2**(bits*k)): the axis-0 choice, LANES_PER_SHIFT."""
    return LANES_PER_SHIFT.get(bits, 1)


def prepare_x(x: Tensor, bits: int, out: Tensor | None = None) -> Tensor:
    """x [K] as the axis-1 kernel reads it for a weight of `bits` whose groups of 8 are one
    word each (`reads_prepared`): fp32 [XP_ROWS, K / 8] (`store_prepared`). In a decode graph
    `router.route(..., prepared=)` writes it instead, and `moe_decode(..., x_prepared=)` then
    makes no launch of its own for it.

    Args:
        x: [K], K a multiple of 8, fp16, bf16 or fp32.
        bits: the weight's bits (2, 3 or 4).
        out: fp32 [XP_ROWS, K / 8] to write; new if None.
    """
    check_device(x)
    if x.numel() % 8:
        raise ValueError(f"x has {x.numel()} elements, not a multiple of 8")
    b_cols = x.numel() // 8
    if out is None:
        out = torch.empty((XP_ROWS, b_cols), dtype=torch.float32, device=x.device)
    else:
        check_prepared(out, x.numel(), "out")
    _prep_x_kernel[(triton.cdiv(b_cols, PREP_BLOCK),)](
        x.contiguous(), out, b_cols, BITS=bits, LPS=prepared_lanes_per_shift(bits),
        BLOCK=PREP_BLOCK, num_warps=4, **pdl_options(x))
    return out


def check_prepared(buf: Tensor, k: int, name: str) -> None:
    """Raise unless `buf` can hold an x of k elements prepared (`prepare_x`): a contiguous
    fp32 [XP_ROWS, k / 8], k a multiple of 8."""
    if (k % 8 or buf.shape != (XP_ROWS, k // 8) or buf.dtype != torch.float32
            or not buf.is_contiguous()):
        raise ValueError(f"{name} must be a contiguous fp32 ({XP_ROWS}, {k // 8}) for {k} "
                         f"elements (a multiple of 8), got {buf.dtype} {tuple(buf.shape)}")


def _aligned8(x: Tensor, x_slot: int) -> bool:
    """Whether every slot's x starts on 8 bytes: the axis-1 kernel may read it as int64 words
    (`X8`); else it reads each element alone."""
    return x.data_ptr() % 8 == 0 and x_slot * x.element_size() % 8 == 0


def _register_cap(cfg: Config, x: Tensor) -> dict[str, int]:
    """The launch's `maxnreg` where the config caps registers and the kernel runs on a GPU."""
    return {"maxnreg": cfg.max_registers} if cfg.max_registers and x.device.type == "cuda" else {}


def pdl_options(x: Tensor) -> dict[str, bool]:
    """The launch arguments of programmatic dependent launch for a kernel on x's device:
    `PDL` (the kernel calls `pdl_launch_next` and `pdl_wait`) and Triton's `launch_pdl`, on a
    CUDA GPU of compute capability 9.0 or later unless MIXDESK_PDL=0; none elsewhere (the
    interpreter, older GPUs) and outside CUDA-graph capture. In a decode graph the next
    kernel's programs are then resident and its first weight tile loaded when the one before
    finishes."""
    if x.device.type != "cuda" or os.environ.get("MIXDESK_PDL", "1") == "0":
        return {}
    if not torch.cuda.is_current_stream_capturing():  # eager launches (prefill) as before:
        return {}  # with it, a 1024-token TTFT measured 0.18 against 0.13 s
    if _capability(x.device.index or 0) < 9:
        return {}
    return {"PDL": True, "launch_pdl": True}


@functools.cache
def _capability(device_index: int) -> int:
    return torch.cuda.get_device_capability(device_index)[0]


def check_device(x: Tensor) -> None:
    """Raise unless the kernels can run on x's device (CPU only in the interpreter); every
    launcher of `mixdesk.kernels` calls it."""
    if x.device.type == "cpu" and not isinstance(_gemv_axis0_kernel, _interpreted_types()):
        raise RuntimeError("the Triton kernels run on CPU tensors only under TRITON_INTERPRET=1, "
                           "set before mixdesk.kernels is imported")


@functools.cache
def _interpreted_types() -> tuple[type, ...]:
    from triton.runtime.interpreter import InterpretedFunction  # noqa: PLC0415

    return (InterpretedFunction,)


@torch.compiler.disable  # opaque to torch.compile: the glue around it fuses, this stays one launch
def gemv(x: Tensor, pw: PackedWeight, out: Tensor | None = None, *,
         config: Config | None = None, x_lane_major: bool = False) -> Tensor:
    """y = W @ x in fp32, for every matrix of `pw` in one launch (they share x).

    Args:
        x: [K], fp16, bf16 or fp32, contiguous.
        pw: the packed weight (`layout.pack`), or a stack of M (`layout.stack`, e.g. k and v).
        out: fp32 [N], or [M, N] for a stack, to add into (zero it first for a plain
            product); new zeros if None.
        config: tile shape; `default_config` if None.
        x_lane_major: x comes lane-major (`reference.lane_major`, as `router.add_norm` and
            `attention.qkv_attention` can write it), for a `pw` that reads it so (axis 1, more
            than one word a group): the launch then makes no copy of it.

    Returns:
        `out`, fp32 [N] for one matrix, [M, N] for a stack.
    """
    check_device(x)
    n_rows, k = pw.shape
    if x.numel() != k:
        raise ValueError(f"x has {x.numel()} elements, W is {pw.shape}")
    mats = pw.n_mats
    shape = (n_rows,) if mats == 1 else (mats, n_rows)
    if out is None:
        out = torch.zeros(shape, dtype=torch.float32, device=x.device)
    elif out.numel() != mats * n_rows or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous fp32 {shape}")
    if x_lane_major and not reads_lane_major(pw):
        raise ValueError(f"a {pw.bits}-bit group-{pw.group} axis-{pw.axis} weight does not "
                         "read x lane-major")
    _launch(x.contiguous(), x, x, x, pw, out, launches=mats, moe=False, mats=1, act=False,
            x_slot=0, out_mat=n_rows, config=config, x_lane_major=x_lane_major)
    return out


def reads_lane_major(pw: PackedWeight) -> bool:
    """Whether `gemv` reads x lane-major for `pw` (axis 1, more than one word a group): given
    so (`x_lane_major`), it makes no copy."""
    return pw.axis == 1 and pw.words > 1


@torch.compiler.disable  # opaque to torch.compile: the glue around it fuses, this stays one launch
def moe_decode(x: Tensor, w13: PackedWeight, w2: PackedWeight, topk_ids: Tensor,
               topk_weights: Tensor, *, out: Tensor | None = None, h: Tensor | None = None,
               configs: tuple[Config | None, Config | None] = (None, None),
               x_prepared: Tensor | None = None) -> Tensor:
    """One token through its top-k experts: sum_s w_s * W2[e_s] (silu(W1[e_s] x) * W3[e_s] x).

    Two launches (three at axis 1, where w2's input is computed by a launch of its own) and no
    host sync: the expert ids and weights are read on the device, so the call can be captured
    in a CUDA graph.

    Args:
        x: [D] hidden state.
        w13: stack of 2E matrices [F, D]: w1 of expert e at 2e, w3 at 2e+1.
        w2: stack of E matrices [D, F].
        topk_ids: int [k] on x's device.
        topk_weights: float [k] routing weights, already normalised.
        out: fp32 [D] to add into; new zeros if None.
        h: zeroed fp32 [k, 2, F] workspace for W1 x and W3 x; new zeros if None.
        configs: tile shapes of the w1/w3 and w2 launches.
        x_prepared: x as `prepare_x(x, w13.bits)` gives it, for a w13 that reads it so
            (`reads_prepared`; `router.route(..., prepared=)` writes it): then w1/w3 read it
            and no launch prepares x here.

    Returns:
        `out`, fp32 [D].
    """
    check_device(x)
    ffn, dim = w13.shape
    if w2.shape != (dim, ffn) or x.numel() != dim:
        raise ValueError(f"shapes do not chain: x {tuple(x.shape)}, w13 {w13.shape}, "
                         f"w2 {w2.shape}")
    topk = topk_ids.numel()
    ids = topk_ids if topk_ids.dtype in {torch.int32, torch.int64} else topk_ids.to(torch.int32)
    ids = ids.contiguous()  # read as they are: a cast would be one more launch a layer
    rw = topk_weights.to(torch.float32).contiguous()
    if h is None:
        h = torch.zeros((topk, 2, ffn), dtype=torch.float32, device=x.device)  # h1, h3 per slot
    if out is None:
        out = torch.zeros(dim, dtype=torch.float32, device=x.device)
    c13 = configs[0] or default_config(w13, 2 * topk, x.device, table=TUNED_MOE)
    c2 = configs[1] or default_config(w2, topk, x.device, table=TUNED_MOE)
    if x_prepared is not None:
        if not reads_prepared(w13):
            raise ValueError(f"a {w13.bits}-bit group-{w13.group} axis-{w13.axis} w13 does not "
                             "read x prepared")
        check_prepared(x_prepared, dim, "x_prepared")
    elif reads_prepared(w13):  # no kernel before wrote it: one launch here
        x_prepared = prepare_x(x, w13.bits)
    _launch(x.contiguous() if x_prepared is None else x_prepared, x, rw, ids, w13, h,
            launches=2 * topk, moe=True, mats=2, act=False, x_slot=0, out_mat=ffn, config=c13,
            wait_first=True, x_prepared=x_prepared is not None)
    if w2.axis == 0:  # w2 computes its input as it loads it
        _launch(h, h[:, 1], rw, ids, w2, out, launches=topk, moe=True, mats=1, act=True,
                x_slot=2 * ffn, out_mat=0, config=c2)
        return out
    # axis 1: a word holds 8 columns, so every w2 program would compute 8 activations a word
    # (each thread again for each of its row tiles): one launch computes them once instead
    if reads_prepared(w2):  # written as w2 reads it: XP_ROWS rows of ffn / 8 a slot
        g = torch.empty((topk, XP_ROWS, ffn // 8), dtype=torch.float32, device=x.device)
        _act_kernel[(math.ceil(ffn / 8 / PREP_BLOCK), topk)](
            h, rw, g, ffn, BLOCK=PREP_BLOCK, XP=True, BITS=w2.bits,
            LPS=prepared_lanes_per_shift(w2.bits), num_warps=4, **pdl_options(x))
    else:
        g = torch.empty((topk, ffn), dtype=torch.float32, device=x.device)
        _act_kernel[(math.ceil(ffn / ACT_BLOCK), topk)](h, rw, g, ffn, BLOCK=ACT_BLOCK,
                                                       num_warps=4, **pdl_options(x))
    _launch(g, g, rw, ids, w2, out, launches=topk, moe=True, mats=1, act=False,
            x_slot=g[0].numel(), out_mat=0, config=c2, x_prepared=reads_prepared(w2))
    return out


@torch.compiler.disable  # opaque to torch.compile: the glue around it fuses, this stays one launch
def dequantize(pw: PackedWeight, out: Tensor | None = None, *,
               dtype: torch.dtype = torch.float16) -> Tensor:
    """Every matrix of `pw` as a dense W[N, K], for prefill's cuBLAS matmul.

    Both meta levels and the codes are dequantized in fp32 and rounded once to `dtype`.

    Args:
        pw: packed weight, or a stack (or `layout.select` view) of M.
        out: [N, K], or [M, N, K] for a stack, contiguous, any float dtype, to overwrite;
            new if None.
        dtype: the dtype of a new `out`.

    Returns:
        `out`: [N, K] for one matrix, [M, N, K] for a stack.
    """
    check_device(pw.codes)
    n_rows, k = pw.shape
    mats = pw.n_mats
    shape = (n_rows, k) if mats == 1 else (mats, n_rows, k)
    if out is None:
        out = torch.empty(shape, dtype=dtype, device=pw.codes.device)
    elif out.numel() != mats * n_rows * k or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {shape}")
    a_rows, b_cols = pw.grid
    if pw.axis == 0:  # per lane, a [rows, cols] tile of one output row block
        block_cols = _pow2_at_most(b_cols, 128)
        block_rows = _pow2_at_most(a_rows, max(1, 2048 // (block_cols * pw.words)))
    else:  # [rows, cols, group] outputs, about 8K of them
        block_cols = _pow2_at_most(b_cols, max(1, 1024 // pw.group))
        block_rows = _pow2_at_most(a_rows, max(1, 8192 // (block_cols * pw.group)))
    grid = (math.ceil(a_rows / block_rows), math.ceil(b_cols / block_cols), mats)
    meta = pw.codes if pw.meta is None else pw.meta
    _dequant_kernel[grid](
        pw.codes, meta, pw.table, out, a_rows, b_cols, pw.period, pw.table.shape[2],
        n_rows, k, BITS=pw.bits, G=pw.group, V=lanes_per_word(pw.bits), S=pw.words,
        INLINE=pw.meta is None, AXIS=pw.axis, BA=block_rows, BB=block_cols, num_warps=4,
    )
    return out


# Measured on an H100 (tests/bench/zerocopy_probe.py): a plain copy kernel reads pinned host
# memory at 50.7 GB/s (92% of the 55.0 GB/s DMA rate), the GEMV reading it directly 33.6 GB/s.
FILL_BLOCK, FILL_ITERS, FILL_WARPS = 4096, 8, 8


@torch.compiler.disable  # opaque to torch.compile, like the GEMVs
def fill_slots(src: Tensor, dst: Tensor, ids: Tensor, pos: Tensor, first: int) -> None:
    """dst[pos[j]] = src[ids[j]] for every j with pos[j] >= first; no host sync.

    Args:
        src: [E, ...] rows, e.g. an expert stack in pinned host memory (the GPU reads it
            over the bus; under TRITON_INTERPRET any CPU tensor).
        dst: [P, ...] rows of the same trailing shape and dtype, on the device.
        ids: int [k] on the device, which rows of src.
        pos: int [k] on the device, which rows of dst; rows below `first` are resident
            and are left alone.
        first: the first staging row of dst.
    """
    if src.dtype != dst.dtype or src.shape[1:] != dst.shape[1:]:
        raise ValueError(f"rows differ: src {src.dtype} {tuple(src.shape)}, "
                         f"dst {dst.dtype} {tuple(dst.shape)}")
    if not (src.is_contiguous() and dst.is_contiguous()):
        raise ValueError("fill_slots needs contiguous src and dst")
    check_device(dst)
    row_len = src[0].numel()
    grid = (math.ceil(row_len / (FILL_BLOCK * FILL_ITERS)), ids.numel())
    _fill_slots_kernel[grid](src, dst, ids, pos, first, row_len, BLOCK=FILL_BLOCK,
                             ITERS=FILL_ITERS, num_warps=FILL_WARPS)
