"""engine.bench's byte count of a decode step (the floor's numerator), on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mixdesk.engine.bench import _compare_hqq, step_bytes
from mixdesk.engine.loader import load_model
from mixdesk.engine.qformat import quantize_model
from mixdesk.engine.quantize import QuantLinear


def _linear_bytes(module: torch.nn.Module) -> int:
    """Stored bytes of a linear layer, or of every linear layer inside a module."""
    if isinstance(module, QuantLinear):
        return sum(t.numel() * t.element_size() for t in module.quantized().tensors("w").values())
    if isinstance(module, torch.nn.Linear):
        return module.weight.numel() * module.weight.element_size()
    return sum(_linear_bytes(m) for m in module.children())


def test_dense_step_reads_every_linear_once(dense_mistral: Path) -> None:
    model = load_model(dense_mistral, device="cpu").model
    got = step_bytes(model, context_used=10, context_read=model.max_len)
    args = model.args
    attention = sum(_linear_bytes(getattr(b.self_attn, n)) for b in model.blocks()
                    for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
    mlp = sum(_linear_bytes(b.moe.experts[0]) for b in model.blocks())
    assert (got["attention"], got["experts_top2"]) == (attention, mlp)
    assert got["kv_used"] == 10 * 2 * args.n_layers * args.n_kv_heads * args.head_dim * 2
    assert got["kv_static"] > got["kv_used"] > 0


def test_moe_step_reads_top_k_experts(tiny_mixtral: Path, tmp_path: Path) -> None:
    folder = quantize_model(tiny_mixtral, tmp_path / "card", "hqq-card")
    model = load_model(folder, device="cpu").model
    got = step_bytes(model, context_used=1, context_read=1)
    one = _linear_bytes(model.blocks()[0].moe.experts[0])
    assert one > 0
    assert got["experts_top2"] == model.args.n_layers * model.args.top_k * one


def test_the_sweep_times_the_default_tile_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """`mixdesk bench --sweep`: the default tile is the first candidate (so the sweep can tell
    it from a swept one and leaves its tuned entry whole), and every candidate decodes as many
    lanes a shift as the default, so the best runs later as it was timed."""
    from mixdesk.engine.bench import candidate_configs  # noqa: PLC0415
    from mixdesk.kernels import gemv  # noqa: PLC0415
    from mixdesk.kernels.layout import pack, random_logical  # noqa: PLC0415

    monkeypatch.setattr(gemv, "_sm_count", lambda _index: 132)  # an H100's, without a GPU
    pw = pack(*random_logical((4096, 1024), bits=2, group=8), bits=2, group=8, axis=0)
    configs = candidate_configs(pw)
    assert configs[0] == gemv.default_config(pw, 1, torch.device("cuda"))
    assert len(configs) > 1 and configs[0] not in configs[1:]
    assert {c.lanes_per_shift for c in configs} == {gemv.LANES_PER_SHIFT[2]}


def test_variants_are_timed_interleaved_round_by_round() -> None:
    """`time_variants` (moe_sweep.py --variants, attn_sweep.py --caps): every variant once a
    round, in order, so drift between calls falls on all alike; medians in microseconds."""
    from mixdesk.engine.bench import time_variants  # noqa: PLC0415

    calls: list[tuple[str, str]] = []
    seconds = iter([3e-6, 9e-6, 1e-6, 7e-6, 2e-6, 8e-6])

    def timed(a: str, b: str) -> float:
        calls.append((a, b))
        return next(seconds)

    rows = time_variants(timed, {"x": ("a", "b"), "y": ("c", "d")})
    assert calls == [("a", "b"), ("c", "d")] * 3
    assert [(r["variant"], r["us_median"]) for r in rows] == [("x", 2.0), ("y", 8.0)]
    assert rows[1]["us"] == pytest.approx([9.0, 7.0, 8.0])


def test_hqq_is_compared_with_the_engine_in_either_order() -> None:
    """The step's matmuls under hqq's torch.compile against each engine row, whichever section
    ran first; nothing without both."""
    hqq = [{"case": f"{name} 2-bit", "hqq_compile_us": us}
           for name, us in (("w1/w3", 100.0), ("w2", 50.0), ("q/o", 20.0), ("k/v", 10.0))]
    rows = [{"axis": 0, "layers": 32, "decode_ms_per_token": 4.0}]
    assert not _compare_hqq({"engine": rows})
    assert not _compare_hqq({"hqq": hqq})
    assert not _compare_hqq({"engine": rows, "hqq": hqq[:3]})  # a matmul missing
    assert "speedup_vs_hqq_compile" not in rows[0]
    assert _compare_hqq({"hqq": hqq, "engine": rows})
    per_layer = 2 * (2 * 100 + 50) + 2 * 20 + 2 * 10  # 2 experts x (w1, w3, w2), q, k, v, o
    assert rows[0]["hqq_compile_step_ms"] == pytest.approx(32 * per_layer / 1e3)
    assert rows[0]["speedup_vs_hqq_compile"] == pytest.approx(32 * per_layer / 1e3 / 4.0)


def test_sweep_tiles_parse_from_the_command_line() -> None:
    """`--tiles 2x128x1,8x64x4` (attn_sweep.py, moe_sweep.py's --tiles-13/--tiles-2)."""
    from mixdesk.engine.bench import parse_tiles  # noqa: PLC0415

    assert parse_tiles("2x128x1,8x64x4") == [(2, 128, 1), (8, 64, 4)]
    tiles = [(16, 128, 4)]
    assert parse_tiles(tiles) is tiles
    with pytest.raises(ValueError):  # noqa: PT011 - int()'s own message
        parse_tiles("2x128")
