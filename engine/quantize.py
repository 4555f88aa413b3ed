"""HQQ quantization: the one module that talks to hqq, plus our own meta quantization.

hqq 0.2.8's `Quantizer.quantize` (the half-quadratic solver) quantizes each
weight. Everything after it is ours: hqq 0.2.x ignores meta quantization, so
scale and zero are quantized here to 8 bits in groups of 128 with plain
min-max, as hqq 0.1.x did; the codes are bit-packed in our own layout; and a
pure-torch two-level dequantize runs them on any device.

Layout of one quantized weight W [N, K] with group g (hqq's own grouping):
    axis 0: W.reshape(g, N*K/g), each column one group (rows r, r+N/g, ...)
    axis 1: W.reshape(N*K/g, g), each row one group (g neighbours along K)
    codes   uint8 in that grouped order, bit-packed little-endian (`pack_codes`)
    scale, zero  one per group, n = N*K/g of each: W ~ (code - zero) * scale
Meta quantization of one of scale/zero (length n, padded to mg*C):
    grid = flat.view(mg, C); column c is one meta group (axis 0, as hqq 0.1.x)
    codes uint8 [mg, C]; qmeta fp16 [2, C] = (step, offset): v ~ (code - offset) * step

Recipes are data (`Recipe`, `RecipeEntry`), matched by module-path pattern.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixdesk.engine.errors import RecipeError

if TYPE_CHECKING:
    from mixdesk.kernels.layout import PackedWeight

log = logging.getLogger("mixdesk.engine.quantize")

HQQ_PINNED = "0.2.8.post1"
META_STEP_CLAMP = 2e4  # hqq 0.1.x clamps 1/step here, "to avoid half-precision problems"
FP16_MAX = 65504.0

# ---------------------------------------------------------------------------- hqq adapter


class _LogLines(io.TextIOBase):
    """A stdout stand-in that turns hqq's prints into log lines."""

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                log.info("hqq: %s", line.strip())
        return len(text)


@contextlib.contextmanager
def _hqq_prints_to_log() -> Iterator[None]:
    with contextlib.redirect_stdout(_LogLines()):
        yield


_hqq_quantizer: Any = None


def _quantizer() -> Any:
    """hqq's `Quantizer` class, imported once, its import-time prints logged."""
    global _hqq_quantizer  # noqa: PLW0603 - a lazy import cache, nothing else
    if _hqq_quantizer is None:
        with _hqq_prints_to_log():
            import hqq  # noqa: PLC0415 - heavy, and only the quantize path needs it
            from hqq.core.quantize import Quantizer  # noqa: PLC0415

        version = getattr(hqq, "__version__", "unknown")
        if version != HQQ_PINNED:
            log.warning("hqq %s is installed; mixdesk is tested with hqq==%s, whose "
                        "output this module reproduces exactly", version, HQQ_PINNED)
        _hqq_quantizer = Quantizer
    return _hqq_quantizer


def hqq_version() -> str:
    _quantizer()
    import hqq  # noqa: PLC0415

    return str(getattr(hqq, "__version__", "unknown"))


# ---------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class QuantSpec:
    """How one weight matrix is quantized.

    Attributes:
        bits: code width, 1..8.
        group: weights per group (one scale and zero each).
        axis: 0 groups `group` rows N/group apart in one column (hqq 0.1.x, the
            card); 1 groups `group` neighbours along K.
        meta_bits: 8 quantizes scale and zero to uint8 codes; None keeps them fp16.
        meta_group: scales (or zeros) per meta group.
        round_zero: round zero to an integer; None is hqq's rule (4-bit only).
        optimize: run hqq's half-quadratic solver (False: plain min-max).
    """

    bits: int
    group: int
    axis: int = 0
    meta_bits: int | None = 8
    meta_group: int = 128
    round_zero: bool | None = None
    optimize: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 8:
            raise RecipeError(f"bits={self.bits} is not supported; use 1 to 8")
        if self.group < 1 or self.meta_group < 1:
            raise RecipeError("group sizes must be positive")
        if self.axis not in (0, 1):
            raise RecipeError(f"axis={self.axis}; use 0 or 1")
        if self.meta_bits not in (8, None):
            raise RecipeError(f"meta_bits={self.meta_bits}; use 8, or None for fp16 meta")
        if self.round_zero is None:  # resolve hqq's rule now, so specs compare by value
            object.__setattr__(self, "round_zero", self.bits == 4)

    @property
    def zero_rounded(self) -> bool:
        # hqq's BaseQuantizeConfig (0.1.x and 0.2.x) rounds zero for 4-bit weights only
        return bool(self.round_zero)

    def bits_per_weight(self) -> float:
        """Storage cost per weight, meta and meta-meta included (no padding)."""
        if self.meta_bits is None:
            return self.bits + 2 * 16 / self.group
        meta = 2 * (self.meta_bits + 2 * 16 / self.meta_group)  # codes + fp16 (step, offset)
        return self.bits + meta / self.group

    def to_dict(self) -> dict[str, Any]:
        return {
            "bits": self.bits, "group": self.group, "axis": self.axis,
            "meta_bits": self.meta_bits, "meta_group": self.meta_group,
            "round_zero": self.zero_rounded, "optimize": self.optimize,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantSpec:
        try:
            return cls(
                bits=int(data["bits"]), group=int(data["group"]), axis=int(data.get("axis", 0)),
                meta_bits=None if data.get("meta_bits") is None else int(data["meta_bits"]),
                meta_group=int(data.get("meta_group", 128)),
                round_zero=data.get("round_zero"), optimize=bool(data.get("optimize", True)),
            )
        except (KeyError, TypeError, ValueError) as bad:
            raise RecipeError(f"not a quantization spec: {dict(data)} ({bad})") from None


# ---------------------------------------------------------------------------- bit packing


def pack_codes(codes: Tensor, bits: int) -> Tensor:
    """Pack integer codes (< 2**bits) into a flat uint8 stream, little-endian.

    Value i of the stream occupies bits [i*bits, (i+1)*bits); the stream is
    padded with zeros to whole bytes. For bits 1, 2, 4 and 8 each byte holds
    8/bits consecutive values, the first in its low bits.
    """
    flat = codes.reshape(-1).to(torch.uint8)
    if bits == 8:
        return flat.clone()
    per_chunk = 8  # 8 values always fill `bits` whole bytes
    pad = (-flat.numel()) % per_chunk
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    if 8 % bits == 0:
        per_byte = 8 // bits
        lanes = flat.view(-1, per_byte).to(torch.int32)  # [bytes, values per byte]
        shifts = torch.arange(per_byte, device=flat.device, dtype=torch.int32) * bits
        return (lanes << shifts).sum(dim=1).to(torch.uint8)
    out = []
    shifts64 = torch.arange(per_chunk, device=flat.device, dtype=torch.int64) * bits
    byte_shifts = torch.arange(bits, device=flat.device, dtype=torch.int64) * 8
    chunks = flat.view(-1, per_chunk)
    for part in chunks.split(1 << 20):  # bound the int64 temporaries
        word = (part.to(torch.int64) << shifts64).sum(dim=1, keepdim=True)  # [c, 1]
        out.append(((word >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1))
    return torch.cat(out)


def unpack_codes(packed: Tensor, bits: int, numel: int) -> Tensor:
    """Inverse of `pack_codes`: the first `numel` codes, flat uint8."""
    if bits == 8:
        return packed.reshape(-1)[:numel]
    if 8 % bits == 0:
        per_byte = 8 // bits
        shifts = torch.arange(per_byte, device=packed.device, dtype=torch.uint8) * bits
        vals = (packed.reshape(-1, 1) >> shifts) & ((1 << bits) - 1)  # [bytes, per byte]
        return vals.reshape(-1)[:numel]
    shifts64 = torch.arange(8, device=packed.device, dtype=torch.int64) * bits
    byte_shifts = torch.arange(bits, device=packed.device, dtype=torch.int64) * 8
    out = []
    for part in packed.reshape(-1, bits).split(1 << 20):
        word = (part.to(torch.int64) << byte_shifts).sum(dim=1, keepdim=True)  # [c, 1]
        out.append(((word >> shifts64) & ((1 << bits) - 1)).to(torch.uint8).reshape(-1))
    return torch.cat(out)[:numel]


def packed_nbytes(numel: int, bits: int) -> int:
    return math.ceil(numel / 8) * bits if bits != 8 else numel


# ---------------------------------------------------------------------------- meta quantization


@dataclass
class QuantMeta:
    """One per-group meta vector (scale or zero), fp16 or 8-bit quantized.

    Attributes:
        length: n, the number of groups of the weight.
        values: fp16 [n] when not quantized.
        codes: uint8 [meta_group, C] when quantized.
        qmeta: fp16 [2, C]: (step, offset), value = (code - offset) * step.
    """

    length: int
    values: Tensor | None = None
    codes: Tensor | None = None
    qmeta: Tensor | None = None

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The n meta values, flat."""
        if self.values is not None:
            return self.values.to(dtype)
        assert self.codes is not None and self.qmeta is not None
        step, offset = self.qmeta.to(dtype)  # [C] each
        grid = (self.codes.to(dtype) - offset) * step  # [mg, C]
        return grid.reshape(-1)[: self.length]

    def tensors(self, prefix: str) -> dict[str, Tensor]:
        if self.values is not None:
            return {prefix: self.values}
        assert self.codes is not None and self.qmeta is not None
        return {f"{prefix}_q": self.codes, f"{prefix}_qmeta": self.qmeta}


def quantize_meta(values: Tensor, bits: int = 8, group: int = 128) -> QuantMeta:
    """Min-max quantize a meta vector to `bits` in groups of `group`, no optimisation.

    The grouping is hqq 0.1.x's axis 0 over the flattened vector: the padded
    vector is viewed as [group, C] and each column is one group. A length that
    is not a multiple of `group` is padded: pad slot i takes the value at
    i mod C, an element of its own column, so no group's min or max moves.

    Unlike hqq 0.1.x, step and offset are rounded to fp16 first and the codes
    computed against the rounded pair, and 1/step is also capped so the fp16
    offset cannot overflow (hqq 0.1.x writes inf there for a constant group
    with |value| > 3.3).
    """
    flat = values.reshape(-1).float()
    n = flat.numel()
    cols = math.ceil(n / group)
    if cols * group != n:
        fill = torch.arange(n, cols * group, device=flat.device) % cols
        flat = torch.cat([flat, flat[fill]])
    grid = flat.view(group, cols)  # [mg, C]
    lo, hi = grid.amin(dim=0), grid.amax(dim=0)  # [C]
    top = float(2**bits - 1)
    inv_step = (top / (hi - lo)).clamp(max=META_STEP_CLAMP)
    inv_step = torch.minimum(inv_step, (FP16_MAX * 0.99) / lo.abs().clamp(min=1e-30))
    step = (1.0 / inv_step).half()
    offset = (-lo * inv_step).half()
    codes = (grid / step.float() + offset.float()).round_().clamp_(0, top).to(torch.uint8)
    return QuantMeta(length=n, codes=codes, qmeta=torch.stack([step, offset]))


# ---------------------------------------------------------------------------- weights


@dataclass
class QuantizedWeight:
    """A quantized weight matrix in the mixdesk layout (see the module docstring).

    Attributes:
        spec: how it was quantized.
        shape: the original [N, K].
        qweight: packed codes, flat uint8.
        scale: per-group step (hqq's 1/scale).
        zero: per-group zero point, in code units.
    """

    spec: QuantSpec
    shape: tuple[int, ...]
    qweight: Tensor
    scale: QuantMeta
    zero: QuantMeta

    @property
    def n_groups(self) -> int:
        return math.prod(self.shape) // self.spec.group

    def tensors(self, prefix: str) -> dict[str, Tensor]:
        """The tensors to store, named `prefix.qweight`, `prefix.scale_q`, ..."""
        out = {f"{prefix}.qweight": self.qweight}
        out.update(self.scale.tensors(f"{prefix}.scale"))
        out.update(self.zero.tensors(f"{prefix}.zero"))
        return out

    @classmethod
    def from_tensors(cls, prefix: str, spec: QuantSpec, shape: tuple[int, ...],
                     tensors: Mapping[str, Tensor]) -> QuantizedWeight:
        """Rebuild from stored tensors; KeyError names a missing one."""
        n = math.prod(shape) // spec.group

        def meta(name: str) -> QuantMeta:
            key = f"{prefix}.{name}"
            if spec.meta_bits is None:
                return QuantMeta(length=n, values=tensors[key])
            return QuantMeta(length=n, codes=tensors[f"{key}_q"], qmeta=tensors[f"{key}_qmeta"])

        return cls(spec, tuple(shape), tensors[f"{prefix}.qweight"], meta("scale"), meta("zero"))

    def grouped_shape(self) -> tuple[int, int]:
        n = self.n_groups
        return (self.spec.group, n) if self.spec.axis == 0 else (n, self.spec.group)

    def codes(self) -> Tensor:
        """Unpacked codes, uint8, in hqq's grouped shape."""
        numel = math.prod(self.shape)
        return unpack_codes(self.qweight, self.spec.bits, numel).view(self.grouped_shape())

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """W ~ (code - zero) * scale, shaped [N, K], in `dtype`.

        Both meta levels and the product are computed in fp32 and rounded once: in fp16
        the 8-bit scale and zero of 2-bit g8 lose enough to cost KL 1.9e-3 on a model
        (docs/PERFORMANCE.md), as the kernels, which stay in fp32, do not.
        """
        meta_shape = (1, -1) if self.spec.axis == 0 else (-1, 1)
        scale = self.scale.dequantize(torch.float32).view(meta_shape)
        zero = self.zero.dequantize(torch.float32).view(meta_shape)
        weight = ((self.codes().to(torch.float32) - zero) * scale).reshape(self.shape)
        return weight.to(dtype)

    @classmethod
    def from_packed(cls, spec: QuantSpec, pw: PackedWeight) -> QuantizedWeight:
        """The torch path's tensors back from the kernels' layout (matrix 0 of `pw`), exactly."""
        from mixdesk.kernels.reference import unpack  # noqa: PLC0415 - kernels only here

        q, scale_q, zero_q, meta = unpack(pw)
        n = scale_q.numel()

        def grid(codes: Tensor, qmeta: Tensor) -> QuantMeta:
            cols = math.ceil(n / spec.meta_group)
            fill = torch.arange(n, cols * spec.meta_group, device=codes.device) % cols
            full = torch.cat([codes, codes[fill]])  # pad slots are never read back
            return QuantMeta(length=n, codes=full.view(spec.meta_group, cols),
                             qmeta=qmeta.contiguous())

        return cls(spec, tuple(pw.shape), pack_codes(q, spec.bits),
                   grid(scale_q, meta[:2]), grid(zero_q, meta[2:]))

    def logical(self) -> dict[str, Tensor]:
        """The kernels' logical form (kernels/layout.py): q uint8 [N, K], scale_q and
        zero_q uint8 [n], meta fp16 [4, C] = (scale step, scale offset, zero step,
        zero offset); group i's meta pair is column i % C. Needs 8-bit meta."""
        s, z = self.scale, self.zero
        if s.codes is None or z.codes is None or s.qmeta is None or z.qmeta is None:
            raise RecipeError("the kernels' layout needs 8-bit meta")
        n = self.n_groups
        return {"q": self.codes().reshape(self.shape), "scale_q": s.codes.reshape(-1)[:n],
                "zero_q": z.codes.reshape(-1)[:n], "meta": torch.cat([s.qmeta, z.qmeta])}

    def nbytes(self) -> dict[str, int]:
        """Bytes stored, split into `qweight` and `meta`."""
        meta = sum(t.numel() * t.element_size() for k, t in self.tensors("w").items()
                   if k != "w.qweight")
        return {"qweight": self.qweight.numel(), "meta": meta}


def hqq_quantize(weight: Tensor, spec: QuantSpec, device: torch.device | str | None = None
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """hqq 0.2.8's `Quantizer.quantize`, unpacked, as `BaseQuantizeConfig` would set it up.

    Args:
        weight: [N, K], any float dtype.
        spec: bits, group, axis, round_zero, optimize.
        device: where the solver runs (default: the weight's device).

    Returns:
        (codes uint8 in the grouped shape, scale fp32 [n], zero fp32 [n]); scale
        is hqq's dequantization step, W ~ (codes - zero) * scale.
    """
    if weight.dim() != 2:
        raise RecipeError(f"only 2-D weights are quantized, got shape {tuple(weight.shape)}")
    if weight.numel() % spec.group:
        raise RecipeError(
            f"a {tuple(weight.shape)} weight does not split into groups of {spec.group}"
        )
    quantizer = _quantizer()
    dev = torch.device(device) if device is not None else weight.device
    with _hqq_prints_to_log():
        codes, meta = quantizer.quantize(
            weight.to(dev), nbits=spec.bits, channel_wise=True, group_size=spec.group,
            optimize=spec.optimize, round_zero=spec.zero_rounded, axis=spec.axis,
            bitpack=False, compute_dtype=None, view_as_float=False, device=str(dev),
        )
    return (codes.to(torch.uint8), meta["scale"].float().reshape(-1),
            meta["zero"].float().reshape(-1))


def quantize_weight(weight: Tensor, spec: QuantSpec, device: torch.device | str | None = None
                    ) -> QuantizedWeight:
    """Quantize one weight matrix: hqq's solver, then our meta quantization and packing.

    The result lives on the CPU whatever device the solver ran on.
    """
    codes, scale, zero = hqq_quantize(weight, spec, device)
    if spec.meta_bits is None:
        scale_meta = QuantMeta(length=scale.numel(), values=scale.half().cpu())
        zero_meta = QuantMeta(length=zero.numel(), values=zero.half().cpu())
    else:
        scale_meta = _cpu_meta(quantize_meta(scale, spec.meta_bits, spec.meta_group))
        zero_meta = _cpu_meta(quantize_meta(zero, spec.meta_bits, spec.meta_group))
    qweight = pack_codes(codes, spec.bits).cpu()
    return QuantizedWeight(spec, tuple(weight.shape), qweight, scale_meta, zero_meta)


def _cpu_meta(meta: QuantMeta) -> QuantMeta:
    assert meta.codes is not None and meta.qmeta is not None
    return QuantMeta(meta.length, codes=meta.codes.cpu(), qmeta=meta.qmeta.cpu())


class QuantLinear(nn.Module):
    """A bias-free linear layer over a `QuantizedWeight`: forward(x) = x @ W_deq.T.

    The pure-torch path dequantizes both meta levels and the weight on every
    call (or once, with `cache=True`, trading memory for speed on the CPU).
    With `packed` set (engine.fastpath, on CUDA), one token (x with a single
    row) runs the fused dequant-GEMV kernel instead, and many rows dequantize with
    the Triton kernel (meta in fp32) into one matmul; the torch copy can then be
    dropped (`drop_torch_copy`), so each weight is held once.

    Attributes:
        spec: the quantization spec.
        in_features, out_features: as nn.Linear.
        packed: the kernels' copy of the weight, or None for the torch path only.
        decode_out: fp32 [out_features], its slice of the model's decode workspace, which
            the model zeroes once per one-token forward (engine.fastpath); None: gemv
            zeroes a fresh output itself.
        row_parts: 1, or the number of matrices `packed` is split into
            (`kernels.layout.split_rows`: q stacked with k and v by `engine.fastpath.fuse_qkv`);
            its outputs and dense rows are put back in order with `layout.merge_rows`.
    """

    qweight: Tensor

    def __init__(self, weight: QuantizedWeight, *, dtype: torch.dtype = torch.float32,
                 cache: bool = False) -> None:
        super().__init__()
        self.spec = weight.spec
        self.shape = weight.shape
        self.out_features, self.in_features = weight.shape
        self.dtype = dtype
        self.cache = cache
        self._cached: Tensor | None = None
        self.packed: PackedWeight | None = None
        self.decode_out: Tensor | None = None
        self.row_parts = 1
        self.keep_fp32 = False  # one token: return the GEMV's fp32 output (engine.fastpath)
        self._names: list[tuple[str, str]] = []  # (stored suffix, buffer name)
        for key, tensor in weight.tensors("w").items():
            suffix = key.removeprefix("w.")
            buffer = suffix.replace(".", "_")
            self.register_buffer(buffer, tensor)
            self._names.append((suffix, buffer))

    @property
    def has_torch_copy(self) -> bool:
        """False once `drop_torch_copy` left the packed copy as the only one."""
        return getattr(self, self._names[0][1]) is not None

    def quantized(self) -> QuantizedWeight:
        if not self.has_torch_copy:
            assert self.packed is not None
            from mixdesk.kernels.layout import join_rows  # noqa: PLC0415 - torch only

            whole = self.packed if self.row_parts == 1 else join_rows(self.packed)
            return QuantizedWeight.from_packed(self.spec, whole)
        tensors = {f"w.{suffix}": getattr(self, buffer) for suffix, buffer in self._names}
        return QuantizedWeight.from_tensors("w", self.spec, self.shape, tensors)

    def drop_torch_copy(self) -> None:
        """Free the torch path's tensors: the packed copy (set first) is the weight."""
        if self.packed is None:
            raise ValueError("pack the weight before dropping the torch copy")
        for _, buffer in self._names:
            setattr(self, buffer, None)

    def restore_torch_copy(self) -> None:
        """Rebuild the torch path's tensors from the packed copy (engine.fastpath.disable)."""
        if self.has_torch_copy:
            return
        for key, tensor in self.quantized().tensors("w").items():
            setattr(self, key.removeprefix("w.").replace(".", "_"), tensor)

    def dequantize(self, dtype: torch.dtype | None = None) -> Tensor:
        dtype = dtype or self.dtype
        if self.packed is not None:  # the Triton dequantize kernel, meta in fp32
            from mixdesk.kernels.gemv import dequantize  # noqa: PLC0415 - triton only here

            dense = dequantize(self.packed, dtype=dtype)  # [N, K], or [parts, N/parts, K]
            if self.row_parts > 1:
                from mixdesk.kernels.layout import merge_rows  # noqa: PLC0415 - torch only

                dense = merge_rows(dense, self.spec.group, self.spec.axis)
            return dense
        return self.quantized().dequantize(dtype)

    def forward(self, x: Tensor, *, x_lane_major: bool = False) -> Tensor:
        """x_lane_major: one token's x in the lane-major order the packed GEMV reads
        (`kernels.gemv.gemv`'s x_lane_major); it then makes no copy of it."""
        if x_lane_major and not (self.packed is not None and x.numel() == self.in_features):
            raise ValueError("x comes lane-major only to one token's packed GEMV")
        if self.packed is not None and x.numel() == self.in_features:  # one token: decode
            from mixdesk.kernels.gemv import gemv  # noqa: PLC0415 - triton only on this path

            y = gemv(x.reshape(-1), self.packed, self.decode_out,
                     x_lane_major=x_lane_major)  # fp32 [N] or [parts, N/parts]
            if self.row_parts > 1:
                from mixdesk.kernels.layout import merge_rows  # noqa: PLC0415 - torch only

                y = merge_rows(y, self.spec.group, self.spec.axis)
            y = y if self.keep_fp32 else y.to(x.dtype)
            return y.view(*x.shape[:-1], self.out_features)
        # many rows (prefill): dequantize once, then one matmul (cuBLAS on a GPU)
        if self._cached is not None and self._cached.dtype == x.dtype:
            weight = self._cached
        else:
            weight = self.dequantize(x.dtype)
            if self.cache:
                self._cached = weight
        return F.linear(x, weight)

    def extra_repr(self) -> str:
        s = self.spec
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bits={s.bits}, group={s.group}, axis={s.axis}, meta_bits={s.meta_bits}")


# ---------------------------------------------------------------------------- recipes

KINDS = ("attention", "experts", "router", "embedding", "norm", "lm_head", "other")
_KIND_PATTERNS = (
    ("attention", "layers.*.self_attn.*_proj.weight"),
    ("experts", "layers.*.moe.experts.*.w[123].weight"),
    ("router", "layers.*.moe.gate.weight"),
    ("embedding", "embed_tokens.weight"),
    ("norm", "*norm.weight"),
    ("lm_head", "lm_head.weight"),
)


def kind_of(name: str) -> str:
    """The kind of a weight (by our module path), for byte totals and recipes."""
    for kind, pattern in _KIND_PATTERNS:
        if fnmatch.fnmatchcase(name, pattern):
            return kind
    return "other"


@dataclass(frozen=True)
class RecipeEntry:
    """One rule: weights whose path matches `pattern` (fnmatch) get `spec`.

    Attributes:
        pattern: fnmatch pattern over our weight names, such as
            `layers.*.moe.experts.*.w[123].weight`.
        spec: the quantization, or None to keep the tensor in the recipe's dtype.
        offload_meta: the planner may keep this weight's meta in host memory.
    """

    pattern: str
    spec: QuantSpec | None
    offload_meta: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"pattern": self.pattern,
                "quant": None if self.spec is None else self.spec.to_dict(),
                "offload_meta": self.offload_meta}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RecipeEntry:
        try:
            quant = data["quant"]
            return cls(str(data["pattern"]), None if quant is None else QuantSpec.from_dict(quant),
                       bool(data.get("offload_meta", True)))
        except (KeyError, TypeError) as bad:
            raise RecipeError(f"not a recipe entry: {dict(data)} ({bad})") from None


@dataclass(frozen=True)
class Recipe:
    """Which weights are quantized how: the first matching entry wins.

    Weights no entry quantizes (router, norms, embeddings, lm_head by default)
    are stored in `keep_dtype`.

    Attributes:
        name: shown in the app and written to the manifest.
        entries: ordered rules.
        keep_dtype: dtype name for unquantized tensors.
    """

    name: str
    entries: tuple[RecipeEntry, ...]
    keep_dtype: str = "float16"
    notes: str = field(default="", compare=False)

    def entry_for(self, name: str) -> RecipeEntry | None:
        for entry in self.entries:
            if fnmatch.fnmatchcase(name, entry.pattern):
                return entry
        return None

    def spec_for(self, name: str, shape: tuple[int, ...] | None = None) -> QuantSpec | None:
        """The spec for weight `name`; None keeps it unquantized (also for non-2-D tensors)."""
        entry = self.entry_for(name)
        if entry is None or entry.spec is None:
            return None
        if shape is not None and len(shape) != 2:
            return None
        return entry.spec

    def with_overrides(self, overrides: Mapping[str, QuantSpec | None], name: str | None = None
                       ) -> Recipe:
        """Put per-pattern overrides in front of the existing entries."""
        extra = tuple(RecipeEntry(p, s) for p, s in overrides.items())
        return replace(self, name=name or f"{self.name}+custom", entries=extra + self.entries)

    def with_specs(self, name: str | None = None, **changes: Any) -> Recipe:
        """Change a field (axis, meta_bits, ...) of every quantized entry's spec."""
        entries = tuple(
            e if e.spec is None else replace(e, spec=replace(e.spec, **changes))
            for e in self.entries
        )
        suffix = ",".join(f"{k}={v}" for k, v in sorted(changes.items()))
        return replace(self, name=name or f"{self.name}[{suffix}]", entries=entries)

    def keep_torch_dtype(self) -> torch.dtype:
        dtype = getattr(torch, self.keep_dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise RecipeError(f"recipe {self.name}: keep_dtype {self.keep_dtype!r} is no dtype")
        return dtype

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "keep_dtype": self.keep_dtype,
                "entries": [e.to_dict() for e in self.entries]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        try:
            return cls(str(data["name"]),
                       tuple(RecipeEntry.from_dict(e) for e in data["entries"]),
                       str(data.get("keep_dtype", "float16")))
        except (KeyError, TypeError) as bad:
            raise RecipeError(f"not a recipe: ({bad})") from None


ATTENTION = "layers.*.self_attn.*_proj.weight"
EXPERTS = "layers.*.moe.experts.*.w[123].weight"


def _two_part(name: str, attention: QuantSpec, experts: QuantSpec, notes: str) -> Recipe:
    return Recipe(name, (RecipeEntry(ATTENTION, attention), RecipeEntry(EXPERTS, experts)),
                  notes=notes)


_ATTN_4G64 = QuantSpec(bits=4, group=64)
RECIPES: dict[str, Recipe] = {
    r.name: r for r in (
        _two_part("hqq-card", _ATTN_4G64, QuantSpec(bits=2, group=8),
                  "the HQQ Mixtral card: attention 4-bit g64, experts 2-bit g8, 8-bit meta"),
        _two_part("2bit-g16", _ATTN_4G64, QuantSpec(bits=2, group=16),
                  "experts 2-bit g16: smaller meta, lower fidelity"),
        _two_part("3bit-g64", _ATTN_4G64, QuantSpec(bits=3, group=64),
                  "experts 3-bit g64"),
        _two_part("4bit-g64", _ATTN_4G64, QuantSpec(bits=4, group=64),
                  "4-bit g64 everywhere: the highest fidelity"),
    )
}

RecipeChooser = Callable[..., Recipe]
"""The budget planner's hook: anything that returns a Recipe (for example one
built with `Recipe.with_overrides` per expert) can be passed where a recipe
name is accepted."""


def get_recipe(recipe: str | Recipe, *, axis: int | None = None,
               meta_bits: int | None | str = "keep") -> Recipe:
    """A recipe by name (or a Recipe as is), optionally with another axis or meta width.

    Args:
        recipe: a name from RECIPES, or a Recipe.
        axis: 0 or 1 for every quantized entry; None keeps the recipe's.
        meta_bits: an int, None for fp16 meta, or "keep".

    Raises:
        RecipeError: unknown name; the message lists the known ones.
    """
    if isinstance(recipe, Recipe):
        base = recipe
    else:
        name = str(recipe)
        if name not in RECIPES:
            raise RecipeError(
                f"unknown recipe {name!r}; choose one of {', '.join(sorted(RECIPES))}"
            )
        base = RECIPES[name]
    changes: dict[str, Any] = {}
    if axis is not None:
        changes["axis"] = axis
    if meta_bits != "keep":
        changes["meta_bits"] = meta_bits
    if not changes:
        return base
    name_bits = []
    if axis is not None:
        name_bits.append(f"axis{axis}")
    if meta_bits != "keep":
        name_bits.append("fp16meta" if meta_bits is None else f"meta{meta_bits}")
    return base.with_specs(name=f"{base.name}-{'-'.join(name_bits)}", **changes)


def estimate_bytes(recipe: Recipe, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    """Bytes the recipe stores per kind, from weight shapes alone (for disk checks, the planner).

    Args:
        recipe: the recipe.
        shapes: our weight name -> shape.
    """
    keep_size = torch.empty((), dtype=recipe.keep_torch_dtype()).element_size()
    totals = dict.fromkeys(KINDS, 0)
    for name, shape in shapes.items():
        numel = math.prod(shape)
        spec = recipe.spec_for(name, tuple(shape))
        if spec is None or numel % spec.group:
            totals[kind_of(name)] += numel * keep_size
            continue
        totals[kind_of(name)] += sum(quantized_nbytes(numel, spec))
    return totals


def quantized_nbytes(numel: int, spec: QuantSpec) -> tuple[int, int]:
    """(codes, meta) bytes one weight of `numel` elements stores under `spec`.

    meta is scale and zero together: fp16 per group, or 8-bit codes padded to whole
    meta groups plus their fp16 (step, offset) pairs.
    """
    n = numel // spec.group
    if spec.meta_bits is None:
        meta = 2 * n * 2
    else:
        cols = math.ceil(n / spec.meta_group)
        meta = 2 * (cols * spec.meta_group + 2 * cols * 2)  # uint8 codes + fp16 pairs
    return packed_nbytes(numel, spec.bits), meta


# ---------------------------------------------------------------------------- fidelity

# Chat prompts written for mixdesk (not from any benchmark): everyday questions of the
# kind the demo gets, some factual, some open-ended, some with code.
FIDELITY_PROMPTS = (
    "What is the capital of France?",
    "Give me three tips for sleeping better.",
    "Explain what a hash table is in two sentences.",
    "Write a Python function that reverses a string.",
    "Why is the sky blue?",
    "What should I pack for a weekend hiking trip?",
    "Translate 'good morning, how are you?' into Spanish.",
    "Summarise the plot of Romeo and Juliet in one paragraph.",
    "How many legs does a spider have?",
    "Suggest a name for a small bakery by the sea.",
    "What is the difference between weather and climate?",
    "How do I boil an egg so the yolk stays soft?",
)


@dataclass(frozen=True)
class FidelityReport:
    """How closely a quantized model follows its reference, on teacher-forced chat answers.

    Attributes:
        kl: mean KL(ref || quant) of the next-token distribution, in nats.
        top1: share of answer positions where both models' most likely token agree.
        positions: answer positions scored.
        quant_greedy_ppl_under_ref: perplexity, under REF, of QUANT's own greedy answers.
        ref_greedy_ppl: the same for REF's greedy answers (the floor).
    """

    kl: float
    top1: float
    positions: int
    quant_greedy_ppl_under_ref: float
    ref_greedy_ppl: float

    def to_dict(self) -> dict[str, float | int]:
        return {"kl": self.kl, "top1": self.top1, "positions": self.positions,
                "quant_greedy_ppl_under_ref": self.quant_greedy_ppl_under_ref,
                "ref_greedy_ppl": self.ref_greedy_ppl}


def _greedy(model: nn.Module, ids: list[int], max_new: int, eos: set[int]) -> list[int]:
    dev = next(model.parameters()).device
    out: list[int] = []
    logits = model(torch.tensor([ids], device=dev), torch.arange(len(ids), device=dev))[0, -1]
    for step in range(max_new):
        token = int(logits.argmax())
        out.append(token)
        if token in eos:
            break
        pos = torch.tensor([len(ids) + step], device=dev)
        logits = model(torch.tensor([[token]], device=dev), pos)[0, -1]
    return out


def _answer_logprobs(model: nn.Module, prompt: list[int], answer: list[int]) -> Tensor:
    """log-softmax of the logits that predict each answer token, [len(answer), V]."""
    dev = next(model.parameters()).device
    seq = torch.tensor([prompt + answer], device=dev)
    logits = model(seq, torch.arange(seq.shape[1], device=dev))[0].float()  # [T, V]
    return torch.log_softmax(logits[len(prompt) - 1: -1], dim=-1).cpu()


def measure_fidelity(ref: Any, quant: Any, *, prompts: tuple[str, ...] = FIDELITY_PROMPTS,
                     max_new_tokens: int = 48, device: str = "cpu") -> FidelityReport:
    """KL and top-1 agreement of QUANT against REF on REF's own greedy chat answers.

    Each prompt goes through the chat template; REF answers greedily; both models
    then read prompt + answer in one pass (teacher forcing) and every answer
    position is scored. QUANT's own greedy answers are also scored under REF.

    Args:
        ref: reference model folder (or a LoadedModel).
        quant: quantized (or any other) model folder of the same tokenizer (or a LoadedModel).
        prompts: user messages.
        max_new_tokens: answer length cap.
        device: where both models run, in fp32.
    """
    from mixdesk.engine.generate import encode_prompt  # noqa: PLC0415 - avoids an import cycle
    from mixdesk.engine.loader import LoadedModel, load_model  # noqa: PLC0415

    ref_lm = ref if isinstance(ref, LoadedModel) else load_model(ref, device=device)
    quant_lm = quant if isinstance(quant, LoadedModel) else load_model(quant, device=device)
    for module in quant_lm.model.modules():
        if isinstance(module, QuantLinear):
            module.cache = True  # scoring reads every weight many times; dequantize once
    eos = set(ref_lm.args.eos_token_ids) | {ref_lm.tokenizer.eos_token_id}
    kl_sum = agree = positions = 0.0
    nll_quant = nll_ref = 0.0
    n_quant = n_ref = 0
    with torch.no_grad():
        for text in prompts:
            ids = encode_prompt(ref_lm.tokenizer, text, chat=True)
            answer = _greedy(ref_lm.model, ids, max_new_tokens, eos)
            p_ref = _answer_logprobs(ref_lm.model, ids, answer)  # [A, V]
            p_q = _answer_logprobs(quant_lm.model, ids, answer)
            kl_sum += float((p_ref.exp() * (p_ref - p_q)).sum())
            agree += float((p_ref.argmax(-1) == p_q.argmax(-1)).sum())
            positions += len(answer)
            target = torch.tensor(answer)
            nll_ref -= float(p_ref.gather(1, target[:, None]).sum())
            n_ref += len(answer)
            q_answer = _greedy(quant_lm.model, ids, max_new_tokens, eos)
            under_ref = _answer_logprobs(ref_lm.model, ids, q_answer)
            nll_quant -= float(under_ref.gather(1, torch.tensor(q_answer)[:, None]).sum())
            n_quant += len(q_answer)
    return FidelityReport(kl=kl_sum / positions, top1=agree / positions, positions=int(positions),
                          quant_greedy_ppl_under_ref=math.exp(nll_quant / n_quant),
                          ref_greedy_ppl=math.exp(nll_ref / n_ref))


FIDELITY_TABLE_RECIPES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("hqq-card", {}), ("hqq-card", {"axis": 1}), ("hqq-card", {"meta_bits": None}),
    ("2bit-g16", {}), ("3bit-g64", {}), ("4bit-g64", {}),
)


def fidelity_table(src: Path, workdir: Path, *, device: str | None = None,
                   max_new_tokens: int = 48) -> list[dict[str, Any]]:
    """Quantize `src` with each recipe of FIDELITY_TABLE_RECIPES and measure each one.

    Args:
        src: an unquantized model folder (smol-moe for docs/QUALITY.md).
        workdir: where the quantized folders go (reused if already finished).
        device: where quantization and scoring run; default cuda when available.
        max_new_tokens: answer length cap for the scored answers.

    Returns:
        One row per recipe: name, KL, top-1, perplexities, measured bits per weight,
        bytes and quantize seconds.
    """
    import json  # noqa: PLC0415
    import time  # noqa: PLC0415

    from mixdesk.engine.loader import load_model  # noqa: PLC0415
    from mixdesk.engine.qformat import MANIFEST_NAME, quantize_model  # noqa: PLC0415

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    ref = load_model(src, device=device)
    rows = []
    for name, changes in FIDELITY_TABLE_RECIPES:
        recipe = get_recipe(name, **changes)
        dest = Path(workdir) / recipe.name
        seconds = None
        if not (dest / MANIFEST_NAME).is_file():
            start = time.monotonic()
            quantize_model(src, dest, recipe, device=device)
            seconds = time.monotonic() - start
        totals = json.loads((dest / MANIFEST_NAME).read_text())["totals"]
        scored = Path(workdir) / f"{recipe.name}.fidelity.json"  # an interrupted table resumes
        if scored.is_file() and json.loads(scored.read_text())["max_new_tokens"] == max_new_tokens:
            report = FidelityReport(**json.loads(scored.read_text())["report"])
        else:
            report = measure_fidelity(ref, dest, max_new_tokens=max_new_tokens, device=device)
            scored.write_text(json.dumps({"max_new_tokens": max_new_tokens,
                                          "report": report.to_dict()}))
        quantized = [k for k in ("attention", "experts") if k in totals["bits_per_weight"]]
        qbytes = sum(sum(totals["bytes"][k].values()) for k in quantized)
        qparams = sum(totals["params"][k] for k in quantized)
        rows.append({
            "recipe": recipe.name, **report.to_dict(),
            "bpw_attention": totals["bits_per_weight"].get("attention"),
            "bpw_experts": totals["bits_per_weight"].get("experts"),
            "bpw_quantized": round(8 * qbytes / qparams, 4),
            "total_bytes": totals["total_bytes"], "quantize_s": seconds, "device": device,
        })
        log.info("%s", rows[-1])
    return rows


def _main(argv: list[str] | None = None) -> int:
    """`python -m mixdesk.engine.quantize table SRC WORKDIR [--device D] [--json OUT]`."""
    import argparse  # noqa: PLC0415
    import json  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m mixdesk.engine.quantize")
    sub = parser.add_subparsers(dest="command", required=True)
    table = sub.add_parser("table", help="quantize SRC with every recipe and measure fidelity")
    table.add_argument("src", type=Path)
    table.add_argument("workdir", type=Path)
    table.add_argument("--device", default=None)
    table.add_argument("--max-new-tokens", type=int, default=48)
    table.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # run as __main__, this file is a second copy of the module: use the real one
    from mixdesk.engine import quantize  # noqa: PLC0415

    rows = quantize.fidelity_table(args.src, args.workdir, device=args.device,
                                   max_new_tokens=args.max_new_tokens)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    print("| recipe | KL | top-1 | ppl of its greedy answers (ref: %.2f) | bits/weight "
          "attention | experts | quantize s |" % rows[0]["ref_greedy_ppl"])
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        secs = "-" if r["quantize_s"] is None else f"{r['quantize_s']:.0f}"
        print(f"| {r['recipe']} | {r['kl']:.3f} | {100 * r['top1']:.1f}% | "
              f"{r['quant_greedy_ppl_under_ref']:.2f} | {r['bpw_attention']} | "
              f"{r['bpw_experts']} | {secs} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
