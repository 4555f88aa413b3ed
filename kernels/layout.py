"""The packed layout the fused kernels read, and `pack` from the logical form.

Logical form (what the quantizer produces, in hqq's own grouping; see README.md):
    q        uint8 [N, K]   one code per weight, natural layout, code < 2**bits
    scale_q  uint8 [n]      8-bit scale code of each group, n = N*K/group
    zero_q   uint8 [n]      8-bit zero code of each group
    meta     fp16  [4, C]   (scale step, scale offset, zero step, zero offset) per meta group
    W[group i] = (q - zero_i) * scale_i, with
    scale_i = (scale_q[i] - meta[1, c]) * meta[0, c]
    zero_i = (zero_q[i] - meta[3, c]) * meta[2, c]
    with c = i % C and C = ceil(n / 128)  (hqq 0.1.x's axis-0 meta grouping)

Group order (hqq's): axis 0 is W.reshape(group, n), group i = column i, so its
lanes are rows (i // K) + m*N/group of column i % K; axis 1 is W.reshape(n, group),
group i = row i, i.e. `group` neighbours along K of one output row.

Packed form (`PackedWeight`), per matrix, with the group grid [A, B]
(axis 0: A = N/group, B = K; axis 1: A = N, B = K/group; group i = a*B + b):
    codes  int32 [M, S, A, B]  word s of group (a, b); lanes s*V .. s*V+V-1,
                               lane j at bits [j*bits, (j+1)*bits), V = 32 // bits
                               (3-bit: 10 lanes a word, 2 bits idle)
    meta   int16 [M, A, B]     scale_q | zero_q << 8, or None when inline:
                               2-bit group 8 keeps them in bits 16..31 of the one word
    table  fp32  [M, 4, P*B]   the meta-meta of group (a, b) at column (a % P)*B + b,
                               P = C / gcd(B, C), so one tile row block reads one [B]
                               vector, never a gather; stored as the kernel uses it
                               (`meta_table`): fs*t0 + t1 = 2**bits * scale and
                               fz*t2 + t3 = 1 + zero / 2**bits, fs = 1 + scale_q/256,
                               fz = 1 + zero_q/256
M stacks matrices (experts; w1/w3 pairs) of one shape and spec.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

META_GROUP = 128  # groups per meta group (hqq 0.1.x, the card)
BITS_SUPPORTED = (2, 3, 4)


def lanes_per_word(bits: int) -> int:
    """Codes one int32 word holds: 16 at 2 bits, 10 at 3, 8 at 4."""
    return 32 // bits


def meta_groups(n_groups: int) -> int:
    """C, the number of meta groups for `n_groups` groups (the last one padded)."""
    return math.ceil(n_groups / META_GROUP)


@dataclass(frozen=True)
class PackedWeight:
    """One or more [N, K] low-bit matrices in the kernels' layout (module docstring).

    Attributes:
        bits: code width, 2, 3 or 4.
        group: weights per group.
        axis: hqq's grouping axis, 0 or 1.
        shape: (N, K) of one matrix; y[N] = W[N, K] @ x[K].
        codes: int32 [M, S, A, B].
        meta: int16 [M, A, B], or None when the 8-bit meta is inline in `codes`.
        table: fp32 [M, 4, P_rows*B], the meta-meta per row residue, as `meta_table` gives it.
        period: P, the row period of the meta index (rows a and a+P share it).
    """

    bits: int
    group: int
    axis: int
    shape: tuple[int, int]
    codes: Tensor
    meta: Tensor | None
    table: Tensor
    period: int

    @property
    def n_mats(self) -> int:
        return int(self.codes.shape[0])

    @property
    def words(self) -> int:
        """S, the int32 words per group."""
        return int(self.codes.shape[1])

    @property
    def grid(self) -> tuple[int, int]:
        """(A, B), the group grid of one matrix."""
        return int(self.codes.shape[2]), int(self.codes.shape[3])

    @property
    def inline(self) -> bool:
        return self.meta is None

    def nbytes(self) -> int:
        """Bytes one matrix occupies (and one GEMV reads), all three arrays."""
        total = sum(t[0].numel() * t.element_size()
                    for t in (self.codes, self.meta, self.table) if t is not None)
        return int(total)

    def to(self, device: torch.device | str) -> PackedWeight:
        meta = None if self.meta is None else self.meta.to(device)
        return PackedWeight(self.bits, self.group, self.axis, self.shape,
                            self.codes.to(device), meta, self.table.to(device), self.period)


def words_per_group(bits: int, group: int) -> int:
    return math.ceil(group / lanes_per_word(bits))


def is_inline(bits: int, group: int) -> bool:
    """The 8-bit scale and zero fit in the group's one word (2-bit group 8)."""
    return words_per_group(bits, group) == 1 and group * bits <= 16


def group_grid(shape: tuple[int, int], group: int, axis: int) -> tuple[int, int]:
    """(A, B) for an [N, K] matrix: which rows and columns of groups it has."""
    n_rows, k = shape
    if axis == 0:
        if n_rows % group:
            raise ValueError(f"axis 0 needs N % group == 0, got N={n_rows}, group={group}")
        return n_rows // group, k
    if k % group:
        raise ValueError(f"axis 1 needs K % group == 0, got K={k}, group={group}")
    return n_rows, k // group


def check_spec(bits: int, group: int, axis: int) -> None:
    if bits not in BITS_SUPPORTED:
        raise ValueError(f"bits={bits}: the kernels take {BITS_SUPPORTED}")
    if group < 8 or group > 1024 or group & (group - 1):
        raise ValueError(f"group={group}: the kernels take powers of two from 8 to 1024")
    if axis not in (0, 1):
        raise ValueError(f"axis={axis}: use 0 or 1")


def lanes_of(q: Tensor, group: int, axis: int) -> Tensor:
    """Codes [N, K] -> lanes [group, A, B]: lane m of group (a, b)."""
    n_rows, k = q.shape
    a, b = group_grid((n_rows, k), group, axis)
    if axis == 0:
        return q.reshape(group, a, b)  # W.reshape(group, n): column i = a*K + b
    return q.reshape(a, b, group).permute(2, 0, 1)  # row i of W.reshape(n, group)


def pack(q: Tensor, scale_q: Tensor, zero_q: Tensor, meta: Tensor, *, bits: int, group: int,
         axis: int) -> PackedWeight:
    """Pack one matrix from the logical form (module docstring) into the kernels' layout.

    Args:
        q: uint8 [N, K], the codes in the weight's own layout.
        scale_q: uint8 [N*K/group], scale codes in hqq's group order.
        zero_q: uint8 [N*K/group], zero codes in the same order.
        meta: fp16 [4, C]: scale step, scale offset, zero step, zero offset of each meta group.
        bits: 2, 3 or 4.
        group: a power of two, 8 to 1024.
        axis: 0 or 1, hqq's grouping.

    Returns:
        A PackedWeight with one matrix, on q's device.
    """
    check_spec(bits, group, axis)
    if q.dim() != 2:
        raise ValueError(f"q must be 2-D [N, K], got {tuple(q.shape)}")
    shape = (int(q.shape[0]), int(q.shape[1]))
    a_rows, b_cols = group_grid(shape, group, axis)
    n = a_rows * b_cols
    c_meta = meta_groups(n)
    if scale_q.numel() != n or zero_q.numel() != n:
        raise ValueError(f"{n} groups, but {scale_q.numel()} scales and {zero_q.numel()} zeros")
    if tuple(meta.shape) != (4, c_meta):
        raise ValueError(f"meta must be [4, {c_meta}], got {tuple(meta.shape)}")
    lanes = lanes_of(q.to(torch.int32), group, axis)  # [g, A, B]
    v = lanes_per_word(bits)
    s_words = words_per_group(bits, group)
    codes = torch.zeros((s_words, a_rows, b_cols), dtype=torch.int32, device=q.device)
    for m in range(group):
        codes[m // v] |= lanes[m] << (bits * (m % v))
    mq = scale_q.reshape(a_rows, b_cols).to(torch.int32) | (
        zero_q.reshape(a_rows, b_cols).to(torch.int32) << 8)
    meta_packed: Tensor | None
    if is_inline(bits, group):
        codes[0] |= mq << 16  # wraps into the sign bit as intended: the kernel masks
        meta_packed = None
    else:
        meta_packed = (mq - ((mq >> 15) << 16)).to(torch.int16)[None]  # same 16 bits, signed
    period = c_meta // math.gcd(b_cols, c_meta)
    rows = min(period, a_rows)  # residues that occur
    cols = torch.arange(rows * b_cols, device=meta.device) % c_meta
    table = meta_table(meta, bits)[:, cols]
    return PackedWeight(bits, group, axis, shape, codes[None].contiguous(), meta_packed,
                        table[None].contiguous(), period)


def meta_table(meta: Tensor, bits: int) -> Tensor:
    """fp16 [4, C] (scale step, scale offset, zero step, zero offset) -> the kernels' fp32 form.

    The kernels read a byte b as fb = 1 + b/256 (its bits under a zero exponent), so
    (scale_q - offset) * step * 2**bits = fs * t0 + t1 and 1 + zero / 2**bits = fz * t2 + t3.
    Computed in fp64, rounded once to fp32; `meta_from_table` inverts it.
    """
    s_step, s_off, z_step, z_off = meta.double()
    two_b = float(2**bits)
    return torch.stack([256 * s_step * two_b, -(256 + s_off) * s_step * two_b,
                        256 * z_step / two_b, 1 - (256 + z_off) * z_step / two_b]).float()


def meta_from_table(table: Tensor, bits: int) -> Tensor:
    """Inverse of `meta_table`, back to fp16: exact, or within an ulp where the fp32 table lost
    the offset's last bits (t3 = 1 - (256 + offset) * step / 2**bits cancels against the 1 when
    that product is small; seen for 1 element in ~20 random weights)."""
    t0, t1, t2, t3 = table.double()
    two_b = float(2**bits)
    s_step = t0 / (256 * two_b)
    z_step = t2 * two_b / 256
    s_off = -t1 / (s_step * two_b) - 256
    z_off = (1 - t3) * two_b / z_step - 256
    return torch.stack([s_step, s_off, z_step, z_off]).half()


def stack(weights: list[PackedWeight]) -> PackedWeight:
    """Stack matrices of one shape and spec (experts, or w1/w3 pairs) into one PackedWeight.

    The kernels address matrix m of the stack; for `moe_decode`'s w13 pass
    [w1_0, w3_0, w1_1, w3_1, ...] so that expert e's pair is 2e, 2e+1.
    """
    first = weights[0]
    for w in weights[1:]:
        if (w.bits, w.group, w.axis, w.shape, w.period, w.table.shape[1:]) != (
                first.bits, first.group, first.axis, first.shape, first.period,
                first.table.shape[1:]):
            raise ValueError("stacked matrices must share bits, group, axis, shape and meta "
                             "period")
    meta = None if first.meta is None else torch.cat([w.meta for w in weights  # type: ignore[misc]
                                                      ])
    return PackedWeight(first.bits, first.group, first.axis, first.shape,
                        torch.cat([w.codes for w in weights]), meta,
                        torch.cat([w.table for w in weights]), first.period)


def with_period(pw: PackedWeight, period: int) -> PackedWeight:
    """`pw` with its meta-meta table laid out for `period`, a multiple of its own (a copy of
    the table; codes and meta are shared): table row r' repeats row r' % P, so rows a and
    a + period read the columns they did. It then stacks with matrices of that period (k and
    v beside q at axis 1 of Mixtral: periods 8 and 32). Right for `split_rows`'s matrices too,
    whose table is the whole matrix's.

    Raises:
        ValueError: `period` is not a multiple of `pw.period`.
    """
    if period < pw.period or period % pw.period:
        raise ValueError(f"period {period} is not a multiple of {pw.period}")
    a_rows, b_cols = pw.grid
    held = pw.table.shape[2] // b_cols  # residue rows the table has: min(P, A)
    rows = torch.arange(min(period, a_rows), device=pw.table.device) % held
    cols = (rows[:, None] * b_cols + torch.arange(b_cols, device=pw.table.device)).reshape(-1)
    return PackedWeight(pw.bits, pw.group, pw.axis, pw.shape, pw.codes, pw.meta,
                        pw.table[:, :, cols].contiguous(), period)


def select(pw: PackedWeight, start: int, stop: int | None = None) -> PackedWeight:
    """Matrices start..stop-1 of a stack as a PackedWeight of views (no copy).

    What lets an expert's QuantLinear read its slice of the MoE stacks, so each
    weight lives once on the device."""
    stop = start + 1 if stop is None else stop
    meta = None if pw.meta is None else pw.meta[start:stop]
    return PackedWeight(pw.bits, pw.group, pw.axis, pw.shape, pw.codes[start:stop], meta,
                        pw.table[start:stop], pw.period)


def split_rows(pw: PackedWeight, parts: int) -> PackedWeight:
    """One matrix as a stack of `parts` matrices of N/parts rows (a copy), so that it can
    share a launch with matrices of that shape: q of Mixtral (4096 rows) as 4 of 1024,
    stacked with k and v. Group rows i*A' .. (i+1)*A' - 1 (A' = A/parts) become matrix i;
    its outputs come in a permuted row order that `merge_rows` undoes.

    Raises:
        ValueError: `pw` is a stack, or A' is not a multiple of the meta period P (the
            sub-matrices must read the same meta-meta table rows).
    """
    a_rows, b_cols = pw.grid
    if pw.n_mats != 1 or parts < 1 or a_rows % parts or (a_rows // parts) % pw.period:
        raise ValueError(f"cannot split {pw.n_mats} matrices of {a_rows} group rows "
                         f"(period {pw.period}) into {parts}")
    sub = a_rows // parts
    codes = pw.codes[0].reshape(pw.words, parts, sub, b_cols).transpose(0, 1).contiguous()
    meta = None if pw.meta is None else pw.meta.reshape(parts, sub, b_cols).clone()
    n_rows, k = pw.shape
    return PackedWeight(pw.bits, pw.group, pw.axis, (n_rows // parts, k), codes, meta,
                        pw.table.expand(parts, -1, -1).contiguous(), pw.period)


def join_rows(pw: PackedWeight) -> PackedWeight:
    """The one matrix that `split_rows` split into `pw`'s stack (a copy)."""
    parts, words, sub, b_cols = pw.codes.shape
    codes = pw.codes.transpose(0, 1).reshape(1, words, parts * sub, b_cols).contiguous()
    meta = None if pw.meta is None else pw.meta.reshape(1, parts * sub, b_cols).clone()
    n_rows, k = pw.shape
    return PackedWeight(pw.bits, pw.group, pw.axis, (n_rows * parts, k), codes, meta,
                        pw.table[:1].clone(), pw.period)


def merge_rows(y: Tensor, group: int, axis: int) -> Tensor:
    """Outputs of the matrices `split_rows` made, [parts, N/parts, ...], as [N, ...] in the
    original row order (GEMV outputs, or dense rows from `dequantize`).

    At axis 0 lane m of group row a' of matrix i is row a' + m*A' of its output and row
    i*A' + a' + m*A of W; at axis 1 the rows are W's in order.
    """
    parts, n_sub, *rest = y.shape
    if axis == 1:
        return y.reshape(parts * n_sub, *rest)
    return y.view(parts, group, n_sub // group, *rest).transpose(0, 1).reshape(
        parts * n_sub, *rest)


def random_logical(shape: tuple[int, int], *, bits: int, group: int,
                   device: torch.device | str = "cpu", generator: torch.Generator | None = None
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Random, never-zero inputs in the logical form, shaped like a real quantized weight.

    Codes are uniform; scales positive around 1/64 and zeros inside the code range,
    as the solver gives for weights of std ~0.02; both go through real 8-bit meta.
    """
    n_rows, k = shape
    n = n_rows * k // group
    c_meta = meta_groups(n)
    kw: dict[str, Any] = {"device": device, "generator": generator}
    q = torch.randint(0, 2**bits, (n_rows, k), dtype=torch.uint8, **kw)
    scale_q = torch.randint(0, 256, (n,), dtype=torch.uint8, **kw)
    zero_q = torch.randint(0, 256, (n,), dtype=torch.uint8, **kw)
    top = 2**bits - 1
    s_lo = 0.004 + 0.004 * torch.rand(c_meta, **kw)  # scale in [lo, lo + 255 * step]
    s_step = (0.01 + 0.01 * torch.rand(c_meta, **kw)) / 255
    z_lo = 0.2 * top * torch.rand(c_meta, **kw)
    z_step = 0.6 * top * (0.5 + 0.5 * torch.rand(c_meta, **kw)) / 255
    meta = torch.stack([s_step, -s_lo / s_step, z_step, -z_lo / z_step]).half()
    return q, scale_q, zero_q, meta
