"""pack / unpack and the logical form, against an independent torch dequantization."""

from __future__ import annotations

import pytest
import torch

from mixdesk.kernels import reference
from mixdesk.kernels.layout import (
    is_inline,
    join_rows,
    pack,
    random_logical,
    split_rows,
    stack,
)

SPECS = [(2, 8), (2, 16), (3, 8), (3, 32), (3, 64), (4, 8), (4, 64), (4, 128)]
SPLIT_CASES = [  # (bits, group, axis, shape, parts) for layout.split_rows
    (4, 64, 0, (256, 40), 4),  # q of Mixtral in small: 4 matrices of k's shape
    (2, 8, 0, (96, 24), 3),  # inline meta, an odd number of parts
    (3, 16, 1, (12, 64), 2),
]


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize(("bits", "group"), SPECS)
def test_pack_roundtrip(bits: int, group: int, axis: int) -> None:
    shape = (group * 5, 24) if axis == 0 else (7, group * 3)
    logical = random_logical(shape, bits=bits, group=group)
    pw = pack(*logical, bits=bits, group=group, axis=axis)
    assert pw.inline == is_inline(bits, group)
    *codes, meta = reference.unpack(pw)
    for got, want in zip(codes, logical[:3], strict=True):
        assert torch.equal(got, want)
    # the meta-meta is stored as fp32 in the form the kernels use; back to fp16 it is exact
    # but for offsets within an fp32 ulp of -256
    assert torch.allclose(meta.float(), logical[3].float(), rtol=1e-3)


def test_axis0_group_is_rows_n_over_g_apart() -> None:
    """hqq's axis 0: group i holds column i % K of rows i // K + m * N / g."""
    n_rows, k, g = 32, 6, 8
    q, scale_q, zero_q, meta = random_logical((n_rows, k), bits=2, group=g)
    w = reference.dequantize_logical(q, scale_q, zero_q, meta, bits=2, group=g, axis=0)
    n = n_rows * k // g
    c = torch.arange(n) % meta.shape[1]
    scale = (scale_q.float() - meta[1, c].float()) * meta[0, c].float()
    zero = (zero_q.float() - meta[3, c].float()) * meta[2, c].float()
    i = 13
    rows = i // k + torch.arange(g) * (n_rows // g)
    expect = (q[rows, i % k].float() - zero[i]) * scale[i]
    assert torch.allclose(w[rows, i % k], expect)


def test_meta_period_table() -> None:
    """Shapes whose meta groups wrap rows unevenly still read the right meta-meta."""
    for shape, axis in [((320, 20), 0), ((100, 160), 1), ((24, 184), 1)]:
        logical = random_logical(shape, bits=2, group=8)
        pw = pack(*logical, bits=2, group=8, axis=axis)
        assert pw.period > 1
        w = reference.dequantize(pw)
        want = reference.dequantize_logical(*logical, bits=2, group=8, axis=axis)
        assert torch.allclose(w, want, rtol=1e-3, atol=1e-6)


def test_bad_shapes_are_refused() -> None:
    logical = random_logical((12, 16), bits=2, group=8)
    with pytest.raises(ValueError, match="N % group"):
        pack(*logical, bits=2, group=8, axis=0)
    with pytest.raises(ValueError, match="bits"):
        pack(*logical, bits=5, group=8, axis=1)


def test_stack_needs_one_spec() -> None:
    a = pack(*random_logical((8, 16), bits=2, group=8), bits=2, group=8, axis=1)
    b = pack(*random_logical((8, 16), bits=4, group=8), bits=4, group=8, axis=1)
    assert stack([a, a]).n_mats == 2
    with pytest.raises(ValueError, match="share"):
        stack([a, b])


@pytest.mark.parametrize(("bits", "group", "axis", "shape"),
                         [(2, 8, 0, (64, 96)), (2, 8, 1, (40, 64)), (4, 64, 1, (24, 128)),
                          (4, 64, 0, (128, 24))])
def test_pack_reads_the_quantizer_format(bits: int, group: int, axis: int,
                                         shape: tuple[int, int]) -> None:
    """engine.quantize's QuantizedWeight, packed, dequantizes to exactly its own values."""
    pytest.importorskip("hqq")
    from mixdesk.engine.bench import pack_quantized_weight  # noqa: PLC0415
    from mixdesk.engine.quantize import QuantSpec, quantize_weight  # noqa: PLC0415

    qw = quantize_weight(0.02 * torch.randn(shape), QuantSpec(bits, group, axis))
    assert torch.equal(reference.dequantize(pack_quantized_weight(qw)), qw.dequantize())


@pytest.mark.parametrize(("bits", "group", "axis", "shape", "parts"), SPLIT_CASES)
def test_join_rows_undoes_split_rows(bits: int, group: int, axis: int, shape: tuple[int, int],
                                     parts: int) -> None:
    pw = pack(*random_logical(shape, bits=bits, group=group), bits=bits, group=group, axis=axis)
    split = split_rows(pw, parts)
    assert split.n_mats == parts and split.shape == (shape[0] // parts, shape[1])
    back = join_rows(split)
    assert back.shape == pw.shape and back.period == pw.period
    for got, want in ((back.codes, pw.codes), (back.meta, pw.meta), (back.table, pw.table)):
        assert (got is None and want is None) or torch.equal(got, want)


def test_split_rows_refuses_what_does_not_split() -> None:
    pw = pack(*random_logical((64, 24), bits=2, group=8), bits=2, group=8, axis=0)  # A = 8
    with pytest.raises(ValueError, match="cannot split"):
        split_rows(pw, 3)  # 8 group rows do not split in 3
    with pytest.raises(ValueError, match="cannot split"):
        split_rows(stack([pw, pw]), 2)  # a stack already
    odd = pack(*random_logical((128, 20), bits=2, group=8), bits=2, group=8, axis=0)
    assert odd.period == 3  # 320 groups in 3 meta groups, B = 20: rows 0 and 3 share a table row
    with pytest.raises(ValueError, match="period 3"):
        split_rows(odd, 2)  # 8 group rows a part: part 1 starts at row 8, residue 2, not 0
