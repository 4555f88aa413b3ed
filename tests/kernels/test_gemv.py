"""The fused kernels against their torch references: in the interpreter on small, odd
shapes (CPU, CI), and on the GPU at the Mixtral-8x7B shapes (`pytest -m gpu`)."""

from __future__ import annotations

import pytest
import torch

from mixdesk.kernels import reference
from mixdesk.kernels.gemv import (
    TUNED_MOE,
    XP_ROWS,
    Config,
    _aligned8,
    default_config,
    dequantize,
    fill_slots,
    gemv,
    moe_decode,
    prepare_x,
    prepared_lanes_per_shift,
    reads_prepared,
    split_for,
)
from mixdesk.kernels.layout import (
    PackedWeight,
    merge_rows,
    pack,
    random_logical,
    select,
    split_rows,
    stack,
    with_period,
)

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref.double()).norm() / ref.double().norm())


def check(shape: tuple[int, int], bits: int, group: int, axis: int, *,
          config: Config | None = None, dtype: torch.dtype = torch.float16) -> float:
    """Fresh random codes, meta and x every call; error against fp64 on the fp32 weights."""
    logical = random_logical(shape, bits=bits, group=group, device=DEVICE)
    pw = pack(*logical, bits=bits, group=group, axis=axis)
    x = torch.randn(shape[1], device=DEVICE, dtype=dtype)
    w = reference.dequantize_logical(*logical, bits=bits, group=group, axis=axis)
    base = torch.randn(shape[0], device=DEVICE)  # gemv adds into out: every row must move
    y = gemv(x, pw, base.clone(), config=config)
    assert torch.isfinite(y).all()
    return rel_error(y - base, w.double() @ x.double())


# 2 bits decode 4 lanes from a shift (16 bits kept past the 1 the sum cancels): at axis 0, where
# a thread also sums its 4 columns into one accumulator (kernels/gemv.py `_quarters`), and at
# axis 1 for `moe_decode`'s groups of 8 in one word (x prepared, `prepare_x`): up to ~3e-5 against
# fp64 in the interpreter, where the exact decode stays under 1e-5; the GPU bound at Mixtral
# shapes is 1e-3.
SHARED_SHIFT = 5e-5


def bound_for(bits: int, axis: int) -> float:
    """The interpreter's bound for a `gemv`: SHARED_SHIFT where its 2-bit lanes share a shift
    (axis 0; at axis 1 only `moe_decode` decodes so)."""
    return SHARED_SHIFT if (bits, axis) == (2, 0) else 1e-5

# Small, odd and non-multiple shapes: rows not a multiple of the tile, K not a
# multiple of the column block, meta periods > 1, groups padded in the last word.
INTERPRETER_CASES = [
    ((40, 24), 2, 8, 0, None),
    ((320, 20), 2, 8, 0, Config(2, 8, 2)),  # meta period 7, K split in 2, masked tail
    ((24, 40), 2, 8, 1, None),
    ((100, 160), 2, 8, 1, Config(4, 4, 3)),  # meta period 4, K split in 3
    ((48, 13), 2, 16, 0, None),
    ((128, 12), 4, 64, 0, None),
    ((9, 192), 4, 64, 1, None),
    ((40, 36), 4, 8, 0, None),
    ((368, 13), 3, 16, 0, Config(4, 4, 2)),  # 3-bit: 10 lanes a word, last word short
    ((10, 96), 3, 32, 1, None),
    ((11, 24), 3, 8, 1, Config(8, 2, 1)),
    ((256, 7), 4, 128, 0, None),
]


@pytest.mark.skipif(CUDA, reason="the GPU run checks the Mixtral shapes instead")
@pytest.mark.parametrize(("shape", "bits", "group", "axis", "config"), INTERPRETER_CASES)
def test_gemv_interpreter(shape: tuple[int, int], bits: int, group: int, axis: int,
                          config: Config | None) -> None:
    assert check(shape, bits, group, axis, config=config) < bound_for(bits, axis)


@pytest.mark.skipif(CUDA, reason="the GPU run checks the Mixtral shapes instead")
@pytest.mark.parametrize(("bits", "group"), [(2, 8), (3, 16), (4, 64)])
@pytest.mark.parametrize("lanes_per_shift", [1, 2, 4, 8])
def test_lanes_sharing_a_shift(bits: int, group: int, lanes_per_shift: int) -> None:
    """axis 0 decodes up to 8 // bits lanes from one shift (1 + q/2**(bits*(k+1))): the
    looser decode stays within SHARED_SHIFT of fp64, the exact one within 1e-5
    (kernels/gemv.py)."""
    config = Config(4, 16, 2, lanes_per_shift=lanes_per_shift)
    bound = 1e-5 if lanes_per_shift == 1 else SHARED_SHIFT
    assert check((128, 200), bits, group, 0, config=config) < bound


def test_axis0_tile_columns_come_in_fours() -> None:
    """The axis-0 accumulators hold one column in 4 (`_quarters`): another tile width is a
    typed error before any launch, and the default tile of a 2-column matrix is 4 wide."""
    pw = pack(*random_logical((16, 2), bits=2, group=8), bits=2, group=8, axis=0).to(DEVICE)
    x = torch.randn(2, device=DEVICE)
    with pytest.raises(ValueError, match="multiples of 4, got 6"):
        gemv(x, pw, config=Config(1, 6, 1))
    assert default_config(pw, 1, torch.device(DEVICE)).block_cols == 4
    assert rel_error(gemv(x, pw), reference.gemv(x, pw)) < SHARED_SHIFT


@pytest.mark.skipif(CUDA, reason="covered at full size on the GPU")
def test_gemv_fp32_and_bf16_inputs() -> None:
    assert check((24, 40), 2, 8, 1, dtype=torch.float32) < 1e-5
    assert check((40, 24), 4, 8, 0, dtype=torch.bfloat16) < 1e-5


@pytest.mark.skipif(CUDA, reason="covered at full size on the GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_axis1_groups_of_8_read_x_prepared(dtype: torch.dtype, bits: int) -> None:
    """At axis 1 a group of 8 codes in one word is read by `moe_decode` with x prepared
    (`prepare_x`: its lanes scaled so that 8 // bits share a shift, the groups' sums): the
    kernel's form equals the reference in every dtype x comes in, also from a view that does
    not start on 8 bytes; a row that is not whole groups, or a buffer of another shape, is a
    typed error."""
    assert reads_prepared(pack(*random_logical((8, 16), bits=bits, group=8), bits=bits,
                               group=8, axis=1))
    assert not reads_prepared(pack(*random_logical((8, 32), bits=bits, group=16), bits=bits,
                                   group=16, axis=1))
    lanes = prepared_lanes_per_shift(bits)
    assert lanes == (4 if bits == 2 else 1)
    x = torch.randn(65, device=DEVICE, dtype=dtype)[1:]
    xp = prepare_x(x, bits)
    assert xp.shape == (XP_ROWS, 8)
    want = reference.prepare_x(x, bits, lanes)
    assert torch.equal(xp[:8], want[:8])  # x times powers of 2: exact
    assert torch.allclose(xp[8:], want[8:], rtol=1e-5, atol=1e-4)  # sums: their order
    if bits == 2:  # lane 0 sits 3 places below the top of its shift group: times 2**6
        assert torch.equal(xp[0], x.float()[::8] * 64) and torch.equal(xp[3], x.float()[3::8])
    with pytest.raises(ValueError, match="multiple of 8"):
        prepare_x(x[:60], bits)
    with pytest.raises(ValueError, match="contiguous fp32"):
        prepare_x(x, bits, out=torch.empty(XP_ROWS, 9, device=DEVICE))


@pytest.mark.skipif(CUDA, reason="covered at full size on the GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("offset", [0, 1])
def test_axis1_groups_of_8_read_x_as_words(dtype: torch.dtype, offset: int) -> None:
    """`gemv` at axis 1 with a group of 8 codes in one word reads its 8 x as int64 words,
    taken apart in registers by dtype (`X8`); an x that does not start on 8 bytes (a view from
    element 1) is read element by element. Both equal the reference, in every dtype."""
    logical = random_logical((24, 64), bits=2, group=8, device=DEVICE)
    pw = pack(*logical, bits=2, group=8, axis=1)
    x = torch.randn(65, device=DEVICE, dtype=dtype)[offset:offset + 64]
    assert _aligned8(x, 0) == (offset == 0)
    assert rel_error(gemv(x, pw), reference.gemv(x, pw)) < 1e-5


@pytest.mark.skipif(CUDA, reason="checked at Mixtral size on the GPU")
def test_moe_decode_takes_x_prepared() -> None:
    """x prepared by the kernel before (`router.route(..., prepared=)`) gives the product of
    x itself; w1/w3 that do not read it so, or a buffer of the wrong shape, are typed errors."""
    w13, w2 = _random_moe(24, 40, 4, 1)
    x = torch.randn(24, dtype=torch.float16)
    ids = torch.randperm(4)[:2]
    weights = torch.softmax(torch.randn(2), 0)
    y = moe_decode(x, w13, w2, ids, weights, x_prepared=prepare_x(x, 2))
    assert rel_error(y, moe_decode(x, w13, w2, ids, weights)) < 1e-6
    with pytest.raises(ValueError, match="x_prepared must be a contiguous fp32"):
        moe_decode(x, w13, w2, ids, weights, x_prepared=prepare_x(x, 2)[:, :2])
    w13_0, w2_0 = _random_moe(24, 40, 4, 0)
    with pytest.raises(ValueError, match="does not read x prepared"):
        moe_decode(x, w13_0, w2_0, ids, weights, x_prepared=prepare_x(x, 2))


@pytest.mark.parametrize(("shape", "bits", "group"), [
    ((48, 96), 4, 16), ((40, 128), 3, 64),
    pytest.param((4096, 4096), 4, 64, marks=[pytest.mark.gpu, needs_cuda]),  # Mixtral's o
])
def test_gemv_takes_x_lane_major_without_a_copy(shape: tuple[int, int], bits: int,
                                                group: int) -> None:
    """x handed over lane-major (as add_norm and qkv_attention write it for the axis-1 q/k/v and
    o GEMVs) gives the same product as x in order; a weight that reads x in order refuses it."""
    logical = random_logical(shape, bits=bits, group=group, device=DEVICE)
    pw = pack(*logical, bits=bits, group=group, axis=1)
    x = torch.randn(shape[1], device=DEVICE)
    xt = reference.lane_major(x, group)
    assert not torch.equal(xt, x) and torch.equal(xt.reshape(group, -1)[:, 1], x[group:2 * group])
    y = gemv(xt, pw, x_lane_major=True)
    assert rel_error(y, gemv(x, pw)) < 1e-6
    assert rel_error(y, reference.gemv(xt, pw, x_lane_major=True)) < 1e-5
    plain = pack(*random_logical(shape, bits=2, group=8, device=DEVICE), bits=2, group=8, axis=1)
    with pytest.raises(ValueError, match="lane-major"):
        gemv(x, plain, x_lane_major=True)


@pytest.mark.skipif(CUDA, reason="the GPU tests check single matrices at full size")
@pytest.mark.parametrize("axis", [0, 1])
def test_gemv_stack_is_one_launch_per_matrix(axis: int) -> None:
    """k and v (one shape, one x) as a stack: out [2, N], each row its own matrix."""
    def one() -> PackedWeight:
        logical = random_logical((24, 40), bits=4, group=8, device=DEVICE)
        return pack(*logical, bits=4, group=8, axis=axis)

    kv = stack([one(), one()])
    x = torch.randn(40, device=DEVICE, dtype=torch.float16)
    y = gemv(x, kv)
    assert y.shape == (2, 24)
    assert rel_error(y, reference.gemv(x, kv)) < 1e-5


def _random_moe(dim: int, ffn: int, experts: int, axis: int) -> tuple[PackedWeight, PackedWeight]:
    bits, group = 2, 8

    def one(shape: tuple[int, int]) -> PackedWeight:
        logical = random_logical(shape, bits=bits, group=group, device=DEVICE)
        return pack(*logical, bits=bits, group=group, axis=axis)

    w13 = stack([one((ffn, dim)) for _ in range(2 * experts)])
    w2 = stack([one((dim, ffn)) for _ in range(experts)])
    return w13, w2


@pytest.mark.skipif(CUDA, reason="checked at Mixtral size on the GPU")
@pytest.mark.parametrize("axis", [0, 1])
def test_moe_decode_interpreter(axis: int) -> None:
    dim, ffn, experts = 24, 40, 4
    w13, w2 = _random_moe(dim, ffn, experts, axis)
    x = torch.randn(dim, dtype=torch.float16)
    ids = torch.randperm(experts)[:2]
    weights = torch.softmax(torch.randn(2), 0)
    y = moe_decode(x, w13, w2, ids, weights)
    bound = 2 * SHARED_SHIFT  # two launches, the second reads h
    assert rel_error(y, reference.moe_decode(x, w13, w2, ids, weights)) < bound


MIXTRAL = [((14336, 4096), 2, 8), ((4096, 14336), 2, 8), ((4096, 4096), 4, 64),
           ((1024, 4096), 4, 64)]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize(("shape", "bits", "group"), MIXTRAL)
def test_gemv_mixtral_shapes(shape: tuple[int, int], bits: int, group: int, axis: int) -> None:
    assert check(shape, bits, group, axis) <= 1e-3


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(("bits", "group"), [(2, 16), (3, 64), (4, 128), (3, 8)])
def test_gemv_other_recipes(bits: int, group: int) -> None:
    for axis in (0, 1):
        assert check((14336, 4096), bits, group, axis) <= 1e-3


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("axis", [0, 1])
def test_moe_decode_mixtral_in_a_cuda_graph(axis: int) -> None:
    """Top-2 of 8 experts at full size, captured in a CUDA graph: ids are read on the
    device (a host sync would fail the capture), and a replay follows new ids."""
    dim, ffn, experts = 4096, 14336, 8
    w13, w2 = _random_moe(dim, ffn, experts, axis)
    x = torch.randn(dim, device="cuda", dtype=torch.float16)
    ids = torch.tensor([5, 2], device="cuda", dtype=torch.int32)
    weights = torch.softmax(torch.randn(2, device="cuda"), 0)
    out = torch.zeros(dim, device="cuda")
    moe_decode(x, w13, w2, ids, weights, out=out)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out.zero_()
        moe_decode(x, w13, w2, ids, weights, out=out)
    for new_ids in ([5, 2], [0, 7]):
        ids.copy_(torch.tensor(new_ids))
        graph.replay()
        ref = reference.moe_decode(x, w13, w2, ids, weights)
        assert rel_error(out, ref) <= 1e-3


def check_dequantize(shape: tuple[int, int], bits: int, group: int, axis: int,
                     dtype: torch.dtype = torch.float32) -> float:
    """The dequantize kernel on matrix 1 of a fresh random stack of 2, through a select view."""
    logical = [random_logical(shape, bits=bits, group=group, device=DEVICE) for _ in range(2)]
    pw = stack([pack(*lg, bits=bits, group=group, axis=axis) for lg in logical])
    w = reference.dequantize_logical(*logical[1], bits=bits, group=group, axis=axis)
    both = dequantize(pw, dtype=dtype)
    assert both.shape == (2, *shape) and both.dtype == dtype
    one = dequantize(select(pw, 1), dtype=dtype)
    assert torch.equal(one, both[1])
    return rel_error(one, w)


@pytest.mark.skipif(CUDA, reason="the GPU run checks the Mixtral shapes instead")
@pytest.mark.parametrize(("shape", "bits", "group", "axis", "config"), INTERPRETER_CASES[::2])
def test_dequantize_interpreter(shape: tuple[int, int], bits: int, group: int, axis: int,
                                config: Config | None) -> None:
    del config
    assert check_dequantize(shape, bits, group, axis) < 1e-6
    assert check_dequantize(shape, bits, group, axis, torch.float16) < 1e-3  # one rounding


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize(("shape", "bits", "group"), MIXTRAL)
def test_dequantize_mixtral_shapes(shape: tuple[int, int], bits: int, group: int,
                                   axis: int) -> None:
    assert check_dequantize(shape, bits, group, axis) <= 1e-6
    assert check_dequantize(shape, bits, group, axis, torch.bfloat16) <= 5e-3


@pytest.mark.parametrize("dtype", [torch.int32, torch.float32, torch.int16])
def test_fill_slots_copies_only_the_staged_rows(dtype: torch.dtype) -> None:
    """Odd row lengths (several programs a row, a ragged last block), resident rows untouched."""
    seed = int(torch.randint(0, 2**31, ()))
    gen = torch.Generator().manual_seed(seed)
    row = 3 * 4096 * 8 + 37  # 3 full programs and a ragged fourth
    src = torch.randint(-2**14, 2**14, (6, 2, row // 2 + 1), generator=gen).to(dtype)
    dst = torch.randint(-2**14, 2**14, (5, 2, row // 2 + 1), generator=gen).to(dtype).to(DEVICE)
    want = dst.clone()
    ids = torch.tensor([4, 1, 5], dtype=torch.int32, device=DEVICE)
    pos = torch.tensor([1, 3, 4], dtype=torch.int32, device=DEVICE)  # row 1 is resident
    fill_slots(src if DEVICE == "cpu" else src.pin_memory(), dst, ids, pos, 2)
    reference.fill_slots(src.to(DEVICE), want, ids, pos, 2)
    assert torch.equal(dst, want), f"seed {seed}"
    assert torch.equal(dst[3].cpu(), src[1]) and torch.equal(dst[4].cpu(), src[5])
    assert not torch.equal(dst[1].cpu(), src[4])  # resident: left alone
    with pytest.raises(ValueError, match="rows differ"):
        fill_slots(src[:, :1], dst, ids, pos, 2)


@pytest.mark.parametrize(("bits", "group", "axis", "shape", "parts"), [
    (4, 64, 0, (256, 40), 4),  # q of Mixtral in small: 4 matrices of k's shape
    (2, 8, 0, (96, 24), 3),  # inline meta, an odd number of parts
    (3, 16, 1, (12, 64), 2),
])
def test_split_rows_in_one_launch_with_other_matrices(bits: int, group: int, axis: int,
                                                      shape: tuple[int, int], parts: int) -> None:
    """q split to k's shape (`layout.split_rows`) and stacked with k and v: one gemv launch
    gives q's product (rows put back by `merge_rows`), k's and v's; `dequantize` of the
    split gives q's dense rows. The split matrices read the original's meta-meta table, so
    the kernels are the reference here, on the unsplit weight."""
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)  # fresh inputs each run
    q, k, v = (pack(*random_logical(s, bits=bits, group=group, generator=gen), bits=bits,
                    group=group, axis=axis).to(DEVICE)
               for s in (shape, (shape[0] // parts, shape[1]), (shape[0] // parts, shape[1])))
    split = split_rows(q, parts)
    x = torch.randn(shape[1], generator=gen).to(DEVICE, torch.float16)
    y = gemv(x, stack([*[select(split, i) for i in range(parts)], k, v]))  # [parts + 2, N/parts]
    # 2-bit axis 0 decodes 4 lanes a shift (SHARED_SHIFT); 1e-5 failed there once in ~20 runs
    bound = bound_for(bits, axis)
    assert rel_error(merge_rows(y[:parts], group, axis), reference.gemv(x, q)) < bound
    assert rel_error(y[parts], reference.gemv(x, k)) < bound
    assert rel_error(y[parts + 1], reference.gemv(x, v)) < bound
    dense = merge_rows(dequantize(split, dtype=torch.float32), group, axis)
    assert torch.allclose(dense, reference.dequantize(q), rtol=1e-6, atol=1e-7)


def test_with_period_stacks_q_with_k_and_v_of_a_smaller_period() -> None:
    """Axis 1 of Mixtral in small: q's meta-meta period (4 here; 32 there) is a multiple of
    k's and v's (2; 8 there). Their tables laid out for q's period (`layout.with_period`)
    stack with q's split in one launch and give the same products; a period that is not a
    multiple is refused."""
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)  # fresh inputs each run
    q, k, v = (pack(*random_logical(s, bits=2, group=8, generator=gen), bits=2, group=8,
                    axis=1).to(DEVICE) for s in ((56, 56), (28, 56), (28, 56)))
    assert (q.period, k.period) == (4, 2)
    with pytest.raises(ValueError, match="stacked matrices must share"):
        stack([*(select(split_rows(q, 2), i) for i in range(2)), k, v])
    k4, v4 = with_period(k, 4), with_period(v, 4)
    assert k4.period == 4 and k4.codes.data_ptr() == k.codes.data_ptr()  # only the table copied
    split = split_rows(q, 2)
    x = torch.randn(56, generator=gen).to(DEVICE, torch.float16)
    y = gemv(x, stack([select(split, 0), select(split, 1), k4, v4]))
    assert rel_error(merge_rows(y[:2], 8, 1), reference.gemv(x, q)) < 1e-5
    assert rel_error(y[2], reference.gemv(x, k)) < 1e-5
    assert rel_error(y[3], reference.gemv(x, v)) < 1e-5
    assert torch.allclose(dequantize(k4, dtype=torch.float32), reference.dequantize(k),
                          rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="not a multiple"):
        with_period(q, 6)


def test_with_period_lifts_split_rows_pieces() -> None:
    """Where k's period is the larger (q's 1, k's 3 here), q's split pieces are the ones laid
    out again: their table is the whole q's, which `with_period` repeats by residue."""
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    q, k = (pack(*random_logical(s, bits=2, group=128, generator=gen), bits=2, group=128,
                 axis=1).to(DEVICE) for s in ((128, 640), (64, 640)))
    assert (q.period, k.period) == (1, 3)
    split = split_rows(q, 2)
    lifted = [with_period(select(split, i), 3) for i in range(2)]
    x = torch.randn(640, generator=gen).to(DEVICE, torch.float16)
    y = gemv(x, stack([*lifted, k]))
    assert rel_error(merge_rows(y[:2], 128, 1), reference.gemv(x, q)) < 1e-5
    assert rel_error(y[2], reference.gemv(x, k)) < 1e-5


def test_a_tuned_tile_names_its_programs_per_sm() -> None:
    """A tuned tile's fifth element is the programs per SM its K split aims at; 4 without."""
    pw = pack(*random_logical((64, 512), bits=4, group=64), bits=4, group=64, axis=0)
    key = (4, 64, 0, 64, 512)
    cpu = torch.device("cpu")
    for tile, per_sm in (((1, 16, 4, True, 16), 16), ((1, 16, 4, True), 4)):
        cfg = default_config(pw, 1, cpu, table={key: tile})
        assert (cfg.block_rows, cfg.block_cols, cfg.prefetch) == (1, 16, True)
        assert cfg.split == split_for(pw, 1, 16, 1, cpu, programs_per_sm=per_sm)
    assert default_config(pw, 1, cpu, table={key: (1, 16, 4, True, 16)}).split > \
        default_config(pw, 1, cpu, table={key: (1, 16, 4, True)}).split


def test_a_tuned_tile_may_cap_registers() -> None:
    """A tuned tile's sixth element caps the registers a thread (ptxas maxnreg on a GPU, as the
    shipped w2 tile at axis 0 does); without it there is no cap. A capped config gives the
    reference's product (in the interpreter the cap is not applied)."""
    logical = random_logical((64, 512), bits=2, group=8, device=DEVICE)
    pw = pack(*logical, bits=2, group=8, axis=0)
    key = (2, 8, 0, 64, 512)
    dev = torch.device(DEVICE)
    capped = default_config(pw, 1, dev, table={key: (2, 16, 4, False, 8, 112)})
    assert (capped.max_registers, capped.prefetch) == (112, False)
    assert capped.split == split_for(pw, 2, 16, 1, dev, programs_per_sm=8)
    assert default_config(pw, 1, dev, table={key: (2, 16, 4, False, 8)}).max_registers == 0
    assert TUNED_MOE[(2, 8, 0, 4096, 14336)][5] == 112
    x = torch.randn(512, device=DEVICE, dtype=torch.float16)
    assert rel_error(gemv(x, pw, config=capped), reference.gemv(x, pw)) < SHARED_SHIFT
