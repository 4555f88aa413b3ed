"""The budget planner against DESIGN.md's Mixtral-8x7B arithmetic, and its rules."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from pathlib import Path

import pytest

from mixdesk.engine import budget
from mixdesk.engine.budget import (
    EXPERTS_ON_HOST,
    GB,
    GpuInfo,
    check_fits,
    describe_plan,
    kv_cache_bytes,
    model_source,
    plan,
    price_plan,
    read_hardware_cache,
    with_cached,
    write_hardware_cache,
)
from mixdesk.engine.config import ModelArgs
from mixdesk.engine.errors import ModelFormatError, OutOfVRAMError
from mixdesk.engine.quantize import RECIPES

# mistralai/Mixtral-8x7B-Instruct-v0.1's config.json, the fields the engine reads
MIXTRAL_8X7B = {
    "model_type": "mixtral", "vocab_size": 32000, "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "num_local_experts": 8, "num_experts_per_tok": 2,
    "max_position_embeddings": 32768, "rope_theta": 1e6, "rms_norm_eps": 1e-5,
    "_name_or_path": "Mixtral-8x7B-Instruct-v0.1",
}
H100 = GpuInfo.default("NVIDIA H100 80GB HBM3", 80 * 10**9)
RAM = 256 * 10**9


def near(value: float, design: float, rel: float) -> bool:
    return abs(value - design) <= rel * design


def card(placement: str, *, context: int = 4096, kernel_copy: bool = False) -> budget.Plan:
    return price_plan(model_source(MIXTRAL_8X7B), RECIPES["hqq-card"], placement, H100,
                      context=context, kernel_copy=kernel_copy)


def test_card_resident_matches_design() -> None:
    p = card("resident")
    model_bytes = p.vram["weights"] + p.vram["meta"]
    assert near(model_bytes / GB, 24.2, 0.02), model_bytes  # "everything resident ~24.2 GB"
    assert near(p.hbm_bytes_per_token / GB, 6.7, 0.02)  # "each token reads ~6.7 GB"
    assert near(1e3 * p.decode_s, 2.2, 0.05)  # "the H100 floor is ~2.2 ms"
    assert p.h2d_bytes_per_token == 0 and p.host_bytes == 0


def test_card_meta_offloaded_matches_design() -> None:
    p = card("expert meta on host")
    assert near((p.vram["weights"] + p.vram["meta"]) / GB, 13.0, 0.05)  # "about 13 GB stays"
    # the card's 13.6 GB, plus what a real process adds at context 4096: the KV cache
    # (0.54 GB) and the CUDA context with the kernels loaded (0.82 GB, measured on an H100)
    assert near(p.vram_total / GB, 14.4, 0.02)
    assert near(p.h2d_bytes_per_token / GB, 2.8, 0.05)  # "2.8 GB of meta crosses PCIe"
    assert near(1e3 * p.decode_s, 51, 0.05)  # "about 51 ms at 54.8 GB/s"
    assert p.host_bytes > 10 * GB and p.tensors["experts"].endswith("pinned host memory")
    assert p.runnable is not None  # the offload engine is not built yet


def test_bits_per_weight_match_the_recipe() -> None:
    weights = model_source(MIXTRAL_8X7B).priced(RECIPES["hqq-card"])
    experts = [w for w in weights if w.kind == "experts"]
    params = sum(math.prod(w.shape) for w in experts)
    assert near(params / 1e9, 45.1, 0.01)
    bits = 8 * sum(w.codes + w.meta for w in experts) / params
    assert bits == pytest.approx(RECIPES["hqq-card"].entries[1].spec.bits_per_weight(), abs=1e-3)


def test_a_second_copy_is_counted_when_asked() -> None:
    one, two = card("resident"), card("resident", kernel_copy=True)
    assert one.vram["kernel copy"] == 0 and plan(MIXTRAL_8X7B, H100, 60, 4096).kernel_copy is False
    assert two.vram["kernel copy"] > 0.9 * (one.vram["weights"] + one.vram["meta"])
    assert "stored copy" in describe_plan(two)


def test_kv_cache_scales_with_context() -> None:
    args = model_source(MIXTRAL_8X7B).args
    assert kv_cache_bytes(args, 1) == 128 * 1024  # DESIGN: 128 KiB per token
    assert kv_cache_bytes(args, 4096) == 4096 * 128 * 1024
    short, long = card("resident", context=1024), card("resident", context=8192)
    assert long.vram["kv cache"] == 8 * short.vram["kv cache"]
    assert long.vram_total > short.vram_total


@pytest.mark.parametrize("budget_gb", [14.2, 16, 20, 24, 32, 60, 80])
def test_plan_fits_its_budget(budget_gb: float) -> None:
    p = plan(MIXTRAL_8X7B, H100, budget_gb, 4096, host_ram_bytes=RAM)
    assert p.vram_total <= budget_gb * GB
    assert p.budget_bytes == int(budget_gb * GB)


def test_more_budget_never_worse_fidelity() -> None:
    # from 15 GB, where the card fits with its meta on the host (below it the experts go to
    # the host, best fidelity first: a slower plan that can hold a better recipe)
    kls = [plan(MIXTRAL_8X7B, H100, b, 4096, host_ram_bytes=RAM).fidelity_kl
           for b in (15, 16, 18, 20, 22, 24, 28, 32, 40, 52, 60, 80)]
    assert kls == sorted(kls, reverse=True)
    assert kls[0] == budget.RECIPE_KL["hqq-card"] and kls[-1] == budget.RECIPE_KL["4bit-g64"]


def test_meta_offload_comes_before_lower_fidelity() -> None:
    resident = card("resident").vram_total
    p = plan(MIXTRAL_8X7B, H100, resident / GB - 1, 4096, recipe="hqq-card", host_ram_bytes=RAM)
    assert p.recipe.name == "hqq-card" and p.placement != "resident"


def test_too_small_budget_names_the_smallest_that_works() -> None:
    with pytest.raises(OutOfVRAMError) as err:
        plan(MIXTRAL_8X7B, H100, 2, 4096, host_ram_bytes=RAM)
    message = str(err.value)
    need = float(message.split("at least ")[1].split(" GB", maxsplit=1)[0])
    assert plan(MIXTRAL_8X7B, H100, need, 4096, host_ram_bytes=RAM).vram_total <= need * GB
    with pytest.raises(OutOfVRAMError):
        plan(MIXTRAL_8X7B, H100, need - 0.2, 4096, host_ram_bytes=RAM)
    assert "budget is 2.0 GB" in message and "experts on host" in message


def test_the_engine_runs_experts_on_host_where_the_card_keeps_meta_there() -> None:
    """Meta offload is not built; the same recipe with its experts cached from the host is."""
    meta = plan(MIXTRAL_8X7B, H100, 16, 4096, host_ram_bytes=RAM, kernel_copy=False)
    assert (meta.recipe.name, meta.placement) == ("hqq-card", "expert meta on host")
    p = plan(MIXTRAL_8X7B, H100, 16, 4096, host_ram_bytes=RAM, runnable_only=True,
             kernel_copy=False)
    assert (p.recipe.name, p.placement, p.runnable) == ("hqq-card", EXPERTS_ON_HOST, None)
    check_fits(p, H100)
    experts = [w for w in model_source(MIXTRAL_8X7B).priced(RECIPES["hqq-card"])
               if w.kind == "experts"]
    one = sum(w.packed for w in experts) // 256  # w1, w3, w2 of one expert, packed
    assert near(one / 1e6, 90.8, 0.01)  # the H100 run's expert_mb
    assert p.host_bytes == sum(w.packed for w in experts)
    assert p.vram["expert cache"] == p.expert_slots * one
    rest = p.vram_total - p.vram["expert cache"]
    assert p.vram["headroom"] == budget.STREAMED_HEADROOM_BYTES  # counted in `rest`
    assert p.expert_slots == (16 * 10**9 - rest) // one  # the whole rest of the budget
    resident = p.expert_slots - 2  # 2 staging slots for the top-2 picks
    assert p.expert_hit_rate == pytest.approx(resident / 256)
    assert p.h2d_bytes_per_token == round(64 * (1 - p.expert_hit_rate) * one)
    assert f"{resident} of 256 resident on the GPU + 2 staging slots" in p.tensors["experts"]
    assert p.tensors["attention"] == "GPU"
    assert p.to_dict()["expert_slots"] == p.expert_slots
    # the bus time adds to the HBM time: the step copies only after its router chose
    assert p.decode_s == pytest.approx(p.hbm_bytes_per_token / (H100.hbm_gbps * GB)
                                       + p.h2d_bytes_per_token / (H100.h2d_gbps * GB))


@pytest.mark.parametrize("budget_gb", [4, 8, 12, 13.6])
def test_small_cards_run_with_experts_on_host(budget_gb: float) -> None:
    p = plan(MIXTRAL_8X7B, H100, budget_gb, 4096, host_ram_bytes=RAM, runnable_only=True,
             kernel_copy=False)
    assert p.placement == EXPERTS_ON_HOST and p.runnable is None
    assert p.vram_total <= budget_gb * GB
    assert 2 <= p.expert_slots < 256  # at least the top-2 staging slots
    with pytest.raises(OutOfVRAMError, match="host RAM"):  # 23 GB of experts to pin
        plan(MIXTRAL_8X7B, H100, budget_gb, 4096, host_ram_bytes=8 * 10**9,
             runnable_only=True, kernel_copy=False)


def test_host_ram_is_checked() -> None:
    # 14.2 GB fits only with the experts' ~11.6 GB of meta pinned in host memory
    with pytest.raises(OutOfVRAMError, match="host RAM"):
        plan(MIXTRAL_8X7B, H100, 14.2, 4096, host_ram_bytes=4 * 10**9)
    ok = plan(MIXTRAL_8X7B, H100, 14.2, 4096, host_ram_bytes=RAM)
    assert 0 < ok.host_bytes <= RAM


def test_budget_capped_at_the_gpu() -> None:
    small = GpuInfo.default("NVIDIA GeForce RTX 4060 Ti", 16 * 10**9)
    p = plan(MIXTRAL_8X7B, small, 48, 4096, host_ram_bytes=RAM)
    assert p.budget_bytes == small.total_bytes and p.vram_total <= small.total_bytes
    assert p.gpu.h2d_gbps == budget.DEFAULT_H2D_GBPS  # unknown card: PCIe 4 defaults


def test_check_fits_refuses_what_the_engine_cannot_run() -> None:
    p = plan(MIXTRAL_8X7B, H100, 16, 4096, host_ram_bytes=RAM)
    assert p.runnable is not None
    with pytest.raises(OutOfVRAMError, match=r"with everything on the GPU, .* needs \d"):
        check_fits(p, H100)
    resident = plan(MIXTRAL_8X7B, H100, 60, 4096, host_ram_bytes=RAM, runnable_only=True)
    check_fits(resident, H100)
    busy = GpuInfo("NVIDIA H100 80GB HBM3", 80 * 10**9, 2950, 54.8, free_bytes=10 * 10**9)
    with pytest.raises(OutOfVRAMError, match="is free"):
        check_fits(resident, busy)


def test_describe_plan_table() -> None:
    text = describe_plan(card("expert meta on host"))
    for word in ("hqq-card", "kv cache", "cuda context", "pinned host memory", "tok/s",
                 "offload engine"):
        assert word in text


def test_plan_json_round_trips() -> None:
    data = json.loads(json.dumps(card("resident").to_dict()))
    assert data["vram"]["total"] == sum(v for k, v in data["vram"].items() if k != "total")


def test_hardware_cache(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "hardware.json"
    measured = GpuInfo("NVIDIA H100 80GB HBM3", 80 * 10**9, 3002.3, 54.9, 552 * 10**6)
    write_hardware_cache(measured, path)
    cached = with_cached(H100, read_hardware_cache(path))
    assert (cached.hbm_gbps, cached.h2d_gbps, cached.cuda_context_bytes) == (3002.3, 54.9,
                                                                            552 * 10**6)
    assert cached.measured and not H100.measured
    path.write_text("{not json", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="mixdesk.engine.budget"):
        assert read_hardware_cache(path) == {}
    assert "not readable JSON" in caplog.text
    path.write_text('{"gpus": {"NVIDIA H100 80GB HBM3": {"hbm_gbps": "fast"}}}', encoding="utf-8")
    assert with_cached(H100, read_hardware_cache(path)) == H100


def test_detect_gpu_none_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch  # noqa: PLC0415

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert budget.detect_gpu() is None


def test_plan_from_a_quantized_folder_is_exact(tiny_mixtral: Path, tmp_path: Path) -> None:
    from mixdesk.engine.qformat import quantize_model, read_manifest  # noqa: PLC0415

    folder = quantize_model(tiny_mixtral, tmp_path / "q", "hqq-card")
    source = model_source(folder)
    assert source.recipe is not None and source.recipe.name == "hqq-card"
    weights = source.priced(source.recipe)
    assert sum(w.codes + w.meta for w in weights) == read_manifest(folder)["totals"]["total_bytes"]
    p = plan(folder, None, 1.0, 64, host_ram_bytes=RAM)
    assert p.recipe.name == "hqq-card"  # a quantized folder keeps its recipe


def test_loader_refuses_a_budget_too_small(tiny_mixtral: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from mixdesk.engine import loader  # noqa: PLC0415

    gpu = GpuInfo.default("NVIDIA H100 80GB HBM3", 80 * 10**9)
    monkeypatch.setattr(budget, "detect_gpu", lambda *_: gpu)
    with pytest.raises(OutOfVRAMError, match="needs at least"):
        loader.enforce_budget(tiny_mixtral, "cuda", 0.01, 64)
    loader.enforce_budget(tiny_mixtral, "cuda", 8, 64)  # fits: no error
    loader.enforce_budget(tiny_mixtral, "cpu", 0.01, 64)  # no VRAM budget on the CPU


def test_model_args_source() -> None:
    args = ModelArgs.from_hf_config(MIXTRAL_8X7B)
    assert plan(args, H100, 80, 4096, host_ram_bytes=RAM).recipe.name == "4bit-g64"


def test_a_known_hub_id_plans_offline_from_its_built_in_config() -> None:
    from_hub = model_source("mistralai/Mixtral-8x7B-Instruct-v0.1")
    pinned = model_source(MIXTRAL_8X7B).args  # the fields this file pins above
    assert from_hub.args == replace(pinned, bos_token_id=1, eos_token_ids=(2,))
    assert from_hub.label == "Mixtral-8x7B-Instruct-v0.1"
    assert model_source("MISTRALAI/mixtral-8x7b-instruct-v0.1").args == from_hub.args
    dense = model_source("mistralai/Mistral-7B-Instruct-v0.3").args
    assert (dense.n_experts, dense.vocab_size) == (1, 32768)
    big = model_source("mistralai/Mixtral-8x22B-Instruct-v0.1").args
    assert (big.n_layers, big.dim, big.n_experts) == (56, 6144, 8)
    with pytest.raises(ModelFormatError, match="download it first: mixdesk download acme/x"):
        model_source("acme/x")


def test_plan_cli_on_a_hub_id_prints_json(capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from mixdesk.app.cli import main  # noqa: PLC0415

    monkeypatch.setattr(budget, "_host_ram_available", lambda: RAM)  # not this machine's RAM

    assert main(["plan", "mistralai/Mixtral-8x7B-Instruct-v0.1", "--budget", "16",
                 "--context", "4096", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["recipe"], data["placement"]) == ("hqq-card", EXPERTS_ON_HOST)
    assert data["vram"]["total"] <= 16 * GB and data["expert_slots"] > 100
    weights = model_source(MIXTRAL_8X7B).priced(RECIPES["hqq-card"])
    rest = [w for w in weights if w.kind != "experts"]
    assert data["vram"]["weights"] == sum(w.codes for w in rest)  # the recipe's arithmetic
    assert data["vram"]["meta"] == sum(w.meta for w in rest)
    assert data["host_bytes"] == sum(w.packed for w in weights if w.kind == "experts")
