"""engine.quantize: exactness against hqq 0.2.8, meta quantization, packing, recipes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hqq.core.quantize import BaseQuantizeConfig, HQQLinear, Quantizer

from mixdesk.engine.errors import RecipeError
from mixdesk.engine.quantize import (
    RECIPES,
    QuantLinear,
    QuantSpec,
    estimate_bytes,
    get_recipe,
    hqq_quantize,
    kind_of,
    pack_codes,
    packed_nbytes,
    quantize_meta,
    quantize_weight,
    unpack_codes,
)

CARD_SETTINGS = [(2, 8, 0), (4, 64, 0), (2, 8, 1), (4, 64, 1), (3, 64, 0), (2, 16, 0)]


def _hqq_reference(weight: torch.Tensor, bits: int, group: int, axis: int):
    """hqq 0.2.8 itself, set up the way its users do: HQQLinear + BaseQuantizeConfig."""
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight.data = weight.clone()
    layer = HQQLinear(linear, BaseQuantizeConfig(nbits=bits, group_size=group, axis=axis),
                      compute_dtype=torch.float32, device="cpu")
    codes = Quantizer.unpack[layer.meta["packing"]](layer.W_q, dtype=torch.uint8)
    n = weight.numel() // group
    codes = codes[: group if axis == 0 else n]  # 3-bit words pad rows to a multiple of 10
    return codes, layer.meta["scale"].reshape(-1), layer.meta["zero"].reshape(-1), layer


@pytest.mark.parametrize(("bits", "group", "axis"), CARD_SETTINGS)
def test_weights_match_hqq_exactly(bits: int, group: int, axis: int) -> None:
    weight = torch.randn(192, 320) * 0.02 + torch.randn(192, 1) * 0.01  # row offsets, like LLMs
    ref_codes, ref_scale, ref_zero, _ = _hqq_reference(weight, bits, group, axis)
    codes, scale, zero = hqq_quantize(weight, QuantSpec(bits, group, axis))
    assert torch.equal(codes, ref_codes.view(codes.shape))
    assert torch.equal(scale, ref_scale)
    assert torch.equal(zero, ref_zero)
    # and the packed form stores exactly those codes
    qw = quantize_weight(weight, QuantSpec(bits, group, axis))
    assert torch.equal(qw.codes(), codes)


def test_bf16_input_matches_hqq() -> None:
    weight = (torch.randn(128, 256) * 0.03).to(torch.bfloat16)
    ref_codes, ref_scale, ref_zero, _ = _hqq_reference(weight.float(), 2, 8, 0)
    codes, scale, zero = hqq_quantize(weight, QuantSpec(2, 8, 0))
    assert torch.equal(codes, ref_codes)
    assert torch.equal(scale, ref_scale) and torch.equal(zero, ref_zero)


def test_fp16_meta_dequantizes_like_hqq() -> None:
    weight = torch.randn(64, 512) * 0.05
    _, _, _, layer = _hqq_reference(weight, 4, 64, 0)
    qw = quantize_weight(weight, QuantSpec(4, 64, 0, meta_bits=None))
    # fp16 meta rounds scale and zero once; hqq keeps them in fp32 here
    torch.testing.assert_close(qw.dequantize(), layer.dequantize(), atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("numel", [8, 1001, 4096 + 3])
def test_pack_round_trip(bits: int, numel: int) -> None:
    codes = torch.randint(0, 2**bits, (numel,), dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == packed_nbytes(numel, bits)
    assert torch.equal(unpack_codes(packed, bits, numel), codes)


def test_pack_layout_is_little_endian() -> None:
    # documented layout: for 2-bit, byte = v0 | v1 << 2 | v2 << 4 | v3 << 6
    packed = pack_codes(torch.tensor([1, 2, 3, 0, 0, 0, 0, 3], dtype=torch.uint8), 2)
    assert packed.tolist() == [1 | 2 << 2 | 3 << 4, 3 << 6]
    # 3-bit: eight values fill three bytes, value i at bits [3i, 3i+3)
    values = torch.tensor([5, 1, 7, 0, 2, 6, 3, 4], dtype=torch.uint8)
    word = sum(int(v) << (3 * i) for i, v in enumerate(values))
    assert pack_codes(values, 3).tolist() == [(word >> (8 * j)) & 0xFF for j in range(3)]


def _meta_reference_f64(codes: torch.Tensor, qmeta: torch.Tensor, n: int) -> torch.Tensor:
    step, offset = qmeta.double()
    return ((codes.double() - offset) * step).reshape(-1)[:n]


@pytest.mark.parametrize("n", [128 * 37, 5184, 1000, 7])
def test_meta_quantization_round_trip(n: int) -> None:
    # scale-like values: positive, of varied magnitude
    values = torch.rand(n).mul(0.02).add(1e-3) * torch.exp(torch.randn(n) * 0.3)
    meta = quantize_meta(values, bits=8, group=128)
    cols = math.ceil(n / 128)
    assert meta.codes is not None and meta.qmeta is not None
    assert meta.codes.shape == (128, cols) and meta.codes.dtype == torch.uint8
    assert meta.qmeta.shape == (2, cols) and meta.qmeta.dtype == torch.float16
    got = meta.dequantize(torch.float32)
    ref = _meta_reference_f64(meta.codes, meta.qmeta, n)
    assert got.shape == (n,)
    # the two-level scheme computed in fp32 agrees with float64 to fp32 rounding
    torch.testing.assert_close(got.double(), ref, atol=1e-7, rtol=1e-6)
    # round-trip error: at most half a step of the value's own meta group
    step = meta.qmeta[0].float()
    col = torch.arange(n) % cols
    bound = 0.5 * step[col] * 1.01 + 1e-7
    assert ((got - values).abs() <= bound).all()


def test_meta_padding_keeps_group_extremes() -> None:
    # 5184 groups per matrix, as smol-moe's attention has: 40.5 meta groups
    values = torch.randn(5184)
    meta = quantize_meta(values, 8, 128)
    assert meta.codes is not None
    grid_cols = meta.codes.shape[1]
    assert grid_cols == 41
    padded = torch.cat([values, values[torch.arange(5184, 41 * 128) % 41]]).view(128, 41)
    real = torch.cat([values, torch.full((41 * 128 - 5184,), float("nan"))]).view(128, 41)
    # padding takes values from its own column, so each column's min and max are real values
    torch.testing.assert_close(padded.amin(0), real.nan_to_num(float("inf")).amin(0))
    torch.testing.assert_close(padded.amax(0), real.nan_to_num(float("-inf")).amax(0))
    # every column reaches codes 0 and 255 (min-max, no optimisation)
    assert (meta.codes.amin(0) == 0).all() and (meta.codes.amax(0) >= 254).all()


def test_meta_constant_and_large_groups_stay_finite() -> None:
    # a constant column with |value| > 3.3 overflows hqq 0.1.x's fp16 offset; ours must not
    values = torch.full((256,), 7.0)
    values[1::2] = 12.0
    meta = quantize_meta(values, 8, 128)
    assert meta.qmeta is not None and torch.isfinite(meta.qmeta).all()
    torch.testing.assert_close(meta.dequantize(), values, atol=0.02, rtol=0)


@pytest.mark.parametrize(("bits", "group", "axis"), [(2, 8, 0), (4, 64, 1), (3, 64, 0)])
def test_two_level_dequantize_matches_float64_reference(bits: int, group: int, axis: int) -> None:
    weight = torch.randn(96, 192) * 0.02
    qw = quantize_weight(weight, QuantSpec(bits, group, axis))
    assert qw.scale.codes is not None and qw.scale.qmeta is not None
    assert qw.zero.codes is not None and qw.zero.qmeta is not None
    n = weight.numel() // group
    scale = _meta_reference_f64(qw.scale.codes, qw.scale.qmeta, n)
    zero = _meta_reference_f64(qw.zero.codes, qw.zero.qmeta, n)
    meta_shape = (1, n) if axis == 0 else (n, 1)
    ref = ((qw.codes().double() - zero.view(meta_shape)) * scale.view(meta_shape)).view(96, 192)
    torch.testing.assert_close(qw.dequantize(torch.float32).double(), ref, atol=1e-6, rtol=1e-5)
    # and 8-bit meta costs little against the fp16-meta dequantization of the same codes
    err = (qw.dequantize() - weight).abs().mean()
    assert err < 0.5 * weight.abs().mean()


def test_quant_linear_forward() -> None:
    weight = torch.randn(48, 128) * 0.05
    layer = QuantLinear(quantize_weight(weight, QuantSpec(2, 8, 0)))
    x = torch.randn(3, 5, 128)
    expected = x @ layer.dequantize(torch.float32).T
    torch.testing.assert_close(layer(x), expected)
    assert layer(x).shape == (3, 5, 48)
    cached = QuantLinear(quantize_weight(weight, QuantSpec(2, 8, 0)), cache=True)
    torch.testing.assert_close(cached(x), expected)
    torch.testing.assert_close(cached(x), expected)


def test_card_recipe_is_the_card() -> None:
    card = get_recipe("hqq-card")
    q = card.spec_for("layers.3.self_attn.q_proj.weight", (4096, 4096))
    w2 = card.spec_for("layers.31.moe.experts.7.w2.weight", (4096, 14336))
    assert q is not None and w2 is not None
    assert (q.bits, q.group, q.axis, q.meta_bits, q.meta_group) == (4, 64, 0, 8, 128)
    assert q.zero_rounded  # hqq rounds zero for 4-bit weights
    assert (w2.bits, w2.group, w2.axis, w2.meta_bits, w2.meta_group) == (2, 8, 0, 8, 128)
    assert not w2.zero_rounded
    for kept in ("layers.0.moe.gate.weight", "embed_tokens.weight", "norm.weight",
                 "lm_head.weight", "layers.0.input_layernorm.weight"):
        assert card.spec_for(kept) is None, kept
    # DESIGN.md: 2-bit g8 with 8-bit meta is 4.06 bits per weight, 4-bit g64 4.26
    assert w2.bits_per_weight() == pytest.approx(4.0625)
    assert q.bits_per_weight() == pytest.approx(4.2578, abs=1e-3)


def test_recipe_variants_axis_and_overrides() -> None:
    expert = "layers.0.moe.experts.0.w1.weight"
    for name, (bits, group) in {"2bit-g16": (2, 16), "3bit-g64": (3, 64),
                                "4bit-g64": (4, 64)}.items():
        spec = get_recipe(name).spec_for(expert)
        assert spec is not None and (spec.bits, spec.group) == (bits, group)
    axis1 = get_recipe("hqq-card", axis=1)
    assert axis1.name == "hqq-card-axis1"
    assert all(e.spec is None or e.spec.axis == 1 for e in axis1.entries)
    fp16 = get_recipe("hqq-card", meta_bits=None)
    spec = fp16.spec_for(expert)
    assert spec is not None and spec.meta_bits is None
    custom = RECIPES["hqq-card"].with_overrides({"layers.0.moe.experts.*": QuantSpec(4, 64),
                                                 "layers.1.*": None})
    first = custom.spec_for(expert)
    assert first is not None and first.bits == 4
    assert custom.spec_for("layers.1.self_attn.q_proj.weight") is None
    second = custom.spec_for("layers.2.moe.experts.0.w1.weight")
    assert second is not None and second.bits == 2
    # a recipe survives its manifest form
    assert type(custom).from_dict(custom.to_dict()) == custom


def test_unknown_recipe_lists_the_known_ones() -> None:
    with pytest.raises(RecipeError, match="hqq-card"):
        get_recipe("2bit-g7")
    with pytest.raises(RecipeError):
        QuantSpec(bits=9, group=8)


def test_estimate_bytes_matches_what_quantize_stores() -> None:
    shapes = {"layers.0.moe.experts.0.w1.weight": (256, 128),
              "layers.0.self_attn.q_proj.weight": (128, 128),
              "norm.weight": (128,)}
    recipe = get_recipe("hqq-card")
    est = estimate_bytes(recipe, shapes)
    for name, shape in shapes.items():
        spec = recipe.spec_for(name, shape)
        if spec is None:
            assert est[kind_of(name)] == 2 * math.prod(shape)
            continue
        qw = quantize_weight(torch.randn(shape), spec)
        stored = sum(t.numel() * t.element_size() for t in qw.tensors("p").values())
        assert est[kind_of(name)] == stored


def test_quantize_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    quantize_weight(torch.randn(64, 64), QuantSpec(4, 64))
    assert capsys.readouterr().out == ""


@pytest.mark.slow
def test_smol_moe_matrices_match_hqq_exactly(smol_moe: Path) -> None:
    from mixdesk.engine.checkpoint import Checkpoint  # noqa: PLC0415

    checkpoint = Checkpoint(smol_moe)
    for name, (bits, group) in {
        "model.layers.0.self_attn.q_proj.weight": (4, 64),  # 5184 groups: meta padded
        "model.layers.7.block_sparse_moe.experts.5.w2.weight": (2, 8),
    }.items():
        weight = checkpoint.tensor(name)
        for axis in (0, 1):
            ref_codes, ref_scale, ref_zero, _ = _hqq_reference(weight.float(), bits, group, axis)
            qw = quantize_weight(weight, QuantSpec(bits, group, axis))
            assert torch.equal(qw.codes(), ref_codes.view(qw.codes().shape)), name
            assert qw.scale.codes is not None and qw.zero.codes is not None
            # 8-bit meta: within half a meta step of hqq's fp32 scale and zero
            for meta, ref in ((qw.scale, ref_scale), (qw.zero, ref_zero)):
                assert meta.qmeta is not None
                step = meta.qmeta[0].float()
                col = torch.arange(ref.numel()) % step.numel()
                err = (meta.dequantize() - ref).abs()
                assert (err <= 0.5 * step[col] * 1.01 + 1e-7).all(), name


@pytest.mark.parametrize("axis", [0, 1])
def test_logical_form_for_the_kernels(axis: int) -> None:
    # kernels/layout.py's formula over our logical form gives back our dequantization
    weight = torch.randn(40, 96) * 0.03  # 480 groups of 8: meta padded to 4 columns
    qw = quantize_weight(weight, QuantSpec(2, 8, axis))
    form = qw.logical()
    q, meta = form["q"].float(), form["meta"].float()
    n = qw.n_groups
    col = torch.arange(n) % meta.shape[1]
    scale = (form["scale_q"].float() - meta[1, col]) * meta[0, col]
    zero = (form["zero_q"].float() - meta[3, col]) * meta[2, col]
    grouped = q.reshape((8, n) if axis == 0 else (n, 8))
    shape = (1, n) if axis == 0 else (n, 1)
    rebuilt = ((grouped - zero.view(shape)) * scale.view(shape)).reshape(40, 96)
    torch.testing.assert_close(rebuilt, qw.dequantize(torch.float32))
