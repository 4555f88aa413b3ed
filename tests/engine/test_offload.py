"""engine.offload: experts in host memory, streamed into staging slots inside the decode
graph (PinnedExperts, what the loader uses) or behind an LRU cache of GPU slots.

On the CPU the slots are plain tensors and the kernels run in the Triton
interpreter (tests/conftest.py); the GPU run (`-m gpu`) adds pinned memory, the
copy stream and its events. Fresh random weights every run; the seed is printed
on failure.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mixdesk.engine import budget, fastpath, loader, qformat
from mixdesk.engine.config import ModelArgs
from mixdesk.engine.errors import OutOfVRAMError
from mixdesk.engine.loader import load_model
from mixdesk.engine.model import MoE, Transformer
from mixdesk.engine.offload import (
    ExpertCache,
    PinnedExperts,
    StreamedMoE,
    expert_bytes,
    guess_routers,
    offload_experts,
    stream_experts,
)
from mixdesk.engine.qformat import quantize_model
from mixdesk.engine.quantize import QuantLinear, QuantSpec, quantize_weight
from mixdesk.kernels.layout import pack, random_logical, stack

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
CARD_EXPERTS = QuantSpec(bits=2, group=8)  # the card's experts: 2-bit g8, axis 0, 8-bit meta


def random_layers(n_layers: int, n_experts: int, gen: torch.Generator
                  ) -> list[tuple[object, object]]:
    def one(shape: tuple[int, int]) -> object:
        return pack(*random_logical(shape, bits=2, group=8, generator=gen),
                    bits=2, group=8, axis=0)

    return [(stack([one((32, 16)) for _ in range(2 * n_experts)]),
             stack([one((16, 32)) for _ in range(n_experts)])) for _ in range(n_layers)]


def test_lru_order_hits_misses_and_slot_contents() -> None:
    gen = torch.Generator().manual_seed(0)
    layers = random_layers(2, 4, gen)
    cache = ExpertCache(layers, slots=3, device="cpu")  # type: ignore[arg-type]
    assert cache.fetch(0, [0, 1]) == [0, 1]
    assert cache.fetch(1, [2, 3]) == [2, 0]  # (0, 0) was least recently used
    assert cache.fetch(0, [1]) == [1]  # a hit
    assert cache.fetch(0, [0]) == [2]  # evicts (1, 2), now the oldest
    assert (cache.stats.hits, cache.stats.misses) == (1, 5)
    assert cache.resident(0) == {1: 1, 0: 2} and cache.resident(1) == {3: 0}
    for (layer, expert), slot in cache.lru.items():  # each slot holds its owner's bytes
        w13, w2 = layers[layer]
        assert torch.equal(cache.w13.codes[2 * slot:2 * slot + 2],
                           w13.codes[2 * expert:2 * expert + 2])  # type: ignore[attr-defined]
        assert torch.equal(cache.w2.table[slot], w2.table[expert])  # type: ignore[attr-defined]
    assert cache.stats.bytes_copied == 5 * cache.expert_bytes
    assert cache.expert_bytes == expert_bytes(*layers[0])  # type: ignore[arg-type]


def test_one_step_never_evicts_its_own_experts() -> None:
    cache = ExpertCache(random_layers(1, 4, torch.Generator().manual_seed(1)),  # type: ignore[arg-type]
                        slots=2, device="cpu")
    assert sorted(cache.fetch(0, [2, 3])) == [0, 1]
    with pytest.raises(RuntimeError, match="all 2 cache slots are in use"):
        cache.fetch(0, [0, 1, 2])
    with pytest.raises(ValueError, match="at least one slot"):
        ExpertCache(random_layers(1, 2, torch.Generator()), slots=0,  # type: ignore[arg-type]
                    device="cpu")


def test_prefetch_counts_the_guesses_that_were_used() -> None:
    cache = ExpertCache(random_layers(2, 4, torch.Generator().manual_seed(2)),  # type: ignore[arg-type]
                        slots=4, device="cpu")
    busy = cache.fetch(0, [0, 1])
    cache.prefetch(1, [2, 3], protect=busy)
    assert cache.stats.prefetched == 2 and cache.stats.misses == 2
    cache.fetch(1, [3, 1])  # 3 was guessed right, 1 was not
    assert (cache.stats.prefetch_hits, cache.stats.hits, cache.stats.misses) == (1, 1, 3)
    # a guess never takes a slot the current step reads
    cache.prefetch(0, [2, 3], protect=cache.fetch(1, [3, 1]))
    assert {cache.lru[(1, 3)], cache.lru[(1, 1)]}.isdisjoint(
        {cache.lru.get((0, 2), -1), cache.lru.get((0, 3), -1)})


def small_quantized_model(gen: torch.Generator) -> Transformer:
    """A 3-layer, 4-expert Mixtral with kernel-friendly shapes and card-quantized experts."""
    args = ModelArgs(model_type="mixtral", vocab_size=50, dim=64, n_layers=3, n_heads=4,
                     n_kv_heads=2, head_dim=16, ffn_dim=128, n_experts=4, top_k=2)
    model = Transformer(args)
    for p in model.parameters():
        p.data = torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5
    for block in model.blocks():
        for expert in block.moe.experts:
            for name in ("w1", "w3", "w2"):
                w = getattr(expert, name).weight.data
                setattr(expert, name, QuantLinear(quantize_weight(w, CARD_EXPERTS),
                                                  dtype=torch.float32))
    model = model.requires_grad_(False).to(DEVICE)
    model.setup_cache(32)  # on the device: RoPE tables are plain attributes, not buffers
    return model


def run_steps(model: Transformer, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    """Logits of a prefill and `steps` greedy decode steps, stacked [1 + steps, V]."""
    with torch.inference_mode():
        logits = [model(prompt[None], torch.arange(len(prompt), device=DEVICE))[0, -1]]
        for i in range(steps):
            token = logits[-1].argmax().reshape(1, 1)
            pos = torch.tensor([len(prompt) + i], device=DEVICE)
            logits.append(model(token, pos)[0, -1])
    return torch.stack(logits)


@pytest.mark.parametrize("speculative", [False, True], ids=["plain", "speculative"])
def test_offloaded_model_equals_the_resident_kernel_path(speculative: bool) -> None:
    seed = time.time_ns() % 2**31
    gen = torch.Generator().manual_seed(seed)
    model = small_quantized_model(gen)
    packed, linears, fused, moes = fastpath.pack_model(model)
    assert (packed, fused) == (linears, moes) == (36, 3)
    prompt = torch.randint(0, 50, (7,), generator=gen).to(DEVICE)
    resident = run_steps(model, prompt, 6)

    cache = offload_experts(model, slots=3, device=DEVICE, speculative=speculative)
    assert all(m.packed is None and m.offload is not None
               for m in model.modules() if isinstance(m, MoE))
    assert cache.host[0][0].codes.device.type == "cpu"
    offloaded = run_steps(model, prompt, 6)
    err = float((offloaded - resident).abs().max() / resident.abs().max())
    assert err < 1e-4, f"seed {seed}: relative error {err}"
    s = cache.stats
    # 3 slots for 12 experts: every step misses; each decode layer asks for 2 experts
    assert s.hits + s.misses >= 6 * 3 * 2 and s.misses > 0
    assert (s.prefetched > 0) == speculative
    assert s.bytes_copied == (s.misses + s.prefetched) * cache.expert_bytes


@pytest.mark.parametrize("slots", [2, 7, 14], ids=["staging-only", "some-resident",
                                                   "all-resident"])
def test_streamed_model_equals_the_resident_kernel_path(slots: int) -> None:
    seed = time.time_ns() % 2**31
    gen = torch.Generator().manual_seed(seed)
    model = small_quantized_model(gen)
    fastpath.pack_model(model)
    assert fastpath.assign_workspace(model) > 0  # moe_decode's outputs, as enable_kernels
    prompt = torch.randint(0, 50, (7,), generator=gen).to(DEVICE)
    resident = run_steps(model, prompt, 6)

    pool = stream_experts(model, slots=slots, device=DEVICE)
    moes = [m for m in model.modules() if isinstance(m, MoE)]
    assert all(m.packed is None and isinstance(m.offload, StreamedMoE) for m in moes)
    # the experts left with their workspace slices (the attention here is not quantized)
    assert model.decode_workspace is None and all(m.decode_out is None for m in moes)
    assert fastpath.graph_reason(model) in (None, "the model is not on CUDA")
    assert pool.resident == slots - 2 and pool.host[2][1].codes.device.type == "cpu"
    streamed = run_steps(model, prompt, 6)
    err = float((streamed - resident).abs().max() / resident.abs().max())
    assert err < 1e-4, f"seed {seed}: relative error {err}"
    # 6 decode steps x 3 layers x top-2 picks; resident picks counted on the device
    assert int(pool.asked) == 36
    hits = int(pool.hits)
    assert (hits == 0) if slots == 2 else (hits == 36 if slots == 14 else 0 < hits < 36)


@pytest.mark.parametrize("slots", [6, 9], ids=["guesses-only", "some-resident"])
def test_speculative_streaming_equals_the_resident_kernel_path(slots: int) -> None:
    """Guessed experts copied ahead into the guess sets give the same logits; the counters
    add up: every pick is resident, guessed right or copied, and the bus carries the
    misses plus the guesses."""
    seed = time.time_ns() % 2**31
    gen = torch.Generator().manual_seed(seed)
    model = small_quantized_model(gen)
    fastpath.pack_model(model)
    fastpath.assign_workspace(model)
    prompt = torch.randint(0, 50, (7,), generator=gen).to(DEVICE)
    resident = run_steps(model, prompt, 6)

    pool = stream_experts(model, slots=slots, device=DEVICE, speculative=True)
    assert pool.speculative and pool.resident == slots - 6 and pool.first == slots - 2
    # layer 1 guesses layer 2; no guess from the embedding (layer 0) or after the last
    assert [g is not None for g in pool.gates] == [False, True, False]
    streamed = run_steps(model, prompt, 6)
    err = float((streamed - resident).abs().max() / resident.abs().max())
    assert err < 1e-4, f"seed {seed}: relative error {err}"
    asked, hits, right, guessed = (int(c) for c in (pool.asked, pool.hits, pool.guess_hits,
                                                    pool.guessed))
    assert asked == 36  # 6 steps x 3 layers x top-2
    # layer 2 is guessed: 2 guesses a step, the non-resident ones copied; with none
    # resident some guess is right (all 6 steps wrong by chance: p <= (1/6)**6)
    assert 0 < guessed <= 6 * 2 and right <= guessed and (right > 0 or slots > 6)
    assert pool.experts_copied() == asked - hits - right + guessed
    assert pool.hit_rate() == pytest.approx((hits + right) / asked)


def test_guess_routers_are_the_next_router_reweighted_for_the_next_norm() -> None:
    model = small_quantized_model(torch.Generator().manual_seed(5))
    blocks = model.blocks()
    gates = guess_routers(model)
    assert len(gates) == 3 and gates[0] is None and gates[2] is None  # no guess from layer 0
    blocks[1].post_attention_layernorm.weight.data[3] = 0.0  # a dimension layer 1 drops
    gates = guess_routers(model)
    w_now = blocks[1].post_attention_layernorm.weight.float()
    w_next = blocks[2].post_attention_layernorm.weight.float()
    want = blocks[2].moe.gate.weight.float() * torch.where(
        w_now != 0, w_next / w_now, torch.zeros_like(w_now))
    assert gates[1] is not None and gates[1].dtype == torch.float32
    assert torch.equal(gates[1], want) and bool((gates[1][:, 3] == 0).all())
    # on this layer's normed input it scores as the next router on the next norm would
    h = torch.randn(64, generator=torch.Generator().manual_seed(6)).to(DEVICE)
    x_now = blocks[1].post_attention_layernorm(h)
    x_next = blocks[2].post_attention_layernorm(h)
    x_next[3] = 0.0  # what layer 1's norm dropped cannot be recovered
    torch.testing.assert_close(gates[1] @ x_now, blocks[2].moe.gate(x_next))


GUESS_SCRIPT = Path(__file__).parents[1] / "bench" / "guess_accuracy.py"


def test_guess_accuracy_script_measures_a_moe_and_refuses_a_dense_model(
        tiny_mixtral: Path, dense_mistral: Path, tmp_path: Path) -> None:
    out = tmp_path / "guess.json"
    done = subprocess.run([sys.executable, str(GUESS_SCRIPT), str(tiny_mixtral), "--out",
                           str(out)], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["top_k"] == 2 and result["chance"] == 2 / result["experts"]
    assert result["positions"] > 0
    layers = result["per_layer"]
    assert len(layers) == ModelArgs.from_folder(tiny_mixtral).n_layers - 1
    for key in ("next_router_on_this_input", "next_router_with_the_next_norm",
                "same_layer_previous_token"):
        assert 0.0 <= result[key] <= 1.0
    dense = subprocess.run([sys.executable, str(GUESS_SCRIPT), str(dense_mistral)],
                           capture_output=True, text=True, timeout=300, check=False)
    assert dense.returncode != 0 and "must be a routed MoE" in dense.stderr
    assert "Traceback" not in dense.stderr


def test_a_right_guess_is_served_from_its_guess_slot_and_a_wrong_one_is_staged() -> None:
    gen = torch.Generator().manual_seed(3)
    layers = random_layers(2, 4, gen)
    pool = PinnedExperts(layers, resident=0, top_k=2, device=DEVICE,  # type: ignore[arg-type]
                         guesses=True)
    assert (pool.first, pool.pool_bytes) == (4, 6 * pool.expert_bytes)
    # layer 1's router on layer 0's input scores experts 3 and 1 highest
    gate = torch.zeros(4, 16, device=DEVICE)
    gate[3, 0], gate[1, 0] = 2.0, 1.0
    pool.gates = [gate, None]
    x = torch.zeros(16, device=DEVICE)
    x[0] = 1.0
    pool.slots_for(0, torch.tensor([0, 2], device=DEVICE))
    pool.guess_next(0, x)
    assert pool.guess_ids[1].tolist() == [3, 1] and pool.guess_pos[1].tolist() == [2, 3]
    w13, w2 = layers[1]
    assert torch.equal(pool.w2.codes[2].cpu(), w2.codes[3])  # type: ignore[attr-defined]
    assert torch.equal(pool.w13.codes[6:8].cpu(), w13.codes[2:4])  # type: ignore[attr-defined]
    # layer 1 picks 1 (guessed: slot 3, not copied again) and 0 (wrong guess: staging slot 5)
    pos = pool.slots_for(1, torch.tensor([1, 0], device=DEVICE))
    assert pos.tolist() == [3, 5]
    assert torch.equal(pool.w2.codes[5].cpu(), w2.codes[0])  # type: ignore[attr-defined]
    assert (int(pool.guess_hits), int(pool.guessed), int(pool.asked)) == (1, 2, 4)
    # layer 0's picks and layer 1's wrong one crossed the bus, with both guesses
    assert pool.experts_copied() == 2 + 1 + 2
    assert pool.hit_rate() == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match="speculative prefetch needs at least 6 slots"):
        model = small_quantized_model(gen)
        fastpath.pack_model(model)
        stream_experts(model, slots=5, device=DEVICE, speculative=True)


def test_pinned_experts_spreads_the_resident_ones_over_the_layers() -> None:
    gen = torch.Generator().manual_seed(1)
    layers = random_layers(3, 4, gen)
    pool = PinnedExperts(layers, resident=5, top_k=2, device=DEVICE)  # type: ignore[arg-type]
    # round robin: slot s holds expert s // 3 of layer s % 3
    assert pool.slot_of_host.tolist() == [[0, 3, -1, -1], [1, 4, -1, -1], [2, -1, -1, -1]]
    for slot in range(5):
        layer, expert = slot % 3, slot // 3
        w13, w2 = layers[layer]
        assert torch.equal(pool.w13.codes[2 * slot:2 * slot + 2].cpu(),
                           w13.codes[2 * expert:2 * expert + 2])  # type: ignore[attr-defined]
        assert torch.equal(pool.w2.table[slot].cpu(), w2.table[expert])  # type: ignore[attr-defined]
    assert pool.pool_bytes == 7 * expert_bytes(*layers[0])  # type: ignore[arg-type]
    # a step of layer 1 picking experts 1 (resident, slot 4) and 3 (staged into slot 6)
    pos = pool.slots_for(1, torch.tensor([1, 3], device=DEVICE))
    assert pos.tolist() == [4, 6]
    w13, w2 = layers[1]
    assert torch.equal(pool.w13.codes[12:14].cpu(), w13.codes[6:8])  # type: ignore[attr-defined]
    assert torch.equal(pool.w2.codes[6].cpu(), w2.codes[3])  # type: ignore[attr-defined]
    assert (int(pool.hits), int(pool.asked)) == (1, 2)
    with pytest.raises(ValueError, match="resident experts must be 0..12"):
        PinnedExperts(layers, resident=13, top_k=2, device=DEVICE)  # type: ignore[arg-type]


def test_offload_needs_fused_layers() -> None:
    model = small_quantized_model(torch.Generator().manual_seed(3))
    with pytest.raises(ValueError, match="must be fused"):
        offload_experts(model, slots=3, device=DEVICE)
    with pytest.raises(ValueError, match="must be fused"):
        stream_experts(model, slots=3, device=DEVICE)
    fastpath.pack_model(model)
    with pytest.raises(ValueError, match=r"needs at least 2 slots \(top_k=2\), got 1"):
        stream_experts(model, slots=1, device=DEVICE)


@pytest.fixture(scope="module")
def card_folder(tmp_path_factory: pytest.TempPathFactory, tiny_mixtral: Path) -> Path:
    """A random 2-layer Mixtral whose expert shapes the kernels take, quantized (hqq-card)."""
    from transformers import MixtralConfig, MixtralForCausalLM  # noqa: PLC0415

    tmp = tmp_path_factory.mktemp("offload")
    config = MixtralConfig(vocab_size=331, hidden_size=64, intermediate_size=128,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           head_dim=16, num_local_experts=4, num_experts_per_tok=2,
                           max_position_embeddings=128)
    torch.manual_seed(time.time_ns() % 2**31)
    MixtralForCausalLM(config).save_pretrained(tmp / "src")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tiny_mixtral / name, tmp / "src" / name)  # the tiny fixture's 331 tokens
    return quantize_model(tmp / "src", tmp / "card", "hqq-card")


@pytest.fixture
def kernels_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the loader take the kernel path on the CPU (the interpreter runs the kernels)."""
    if not CUDA:
        for module in (fastpath, qformat):
            monkeypatch.setattr(module, "kernels_unavailable", lambda _device: None)


@pytest.mark.usefixtures("kernels_on_cpu")
def test_a_plan_with_experts_on_host_loads_them_there(card_folder: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    resident = load_model(card_folder, device=DEVICE, context=32)
    plan = SimpleNamespace(placement="experts on host", expert_slots=3)
    monkeypatch.setattr(loader, "enforce_budget", lambda *_args: plan)
    offloaded = load_model(card_folder, device=DEVICE, context=32, budget_gb=1.0)
    moes = [m for m in offloaded.model.modules() if isinstance(m, MoE)]
    assert len(moes) == 2 and all(isinstance(m.offload, StreamedMoE) and m.packed is None
                                  for m in moes)
    pool = moes[0].offload.experts  # type: ignore[union-attr]
    assert pool.resident == 1 and pool.host[1][1].codes.device.type == "cpu"
    experts = [p for m in moes for p in m.experts.parameters()] + \
        [b for m in moes for b in m.experts.buffers()]
    assert all(t.device.type == "cpu" for t in experts)  # no expert ever reached the device
    prompt = torch.randint(0, 331, (6,)).to(DEVICE)
    want = run_steps(resident.model, prompt, 4)
    got = run_steps(offloaded.model, prompt, 4)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-4
    assert int(pool.asked) == 4 * 2 * 2  # every decode pick went through the pool
    assert int(pool.hits) <= int(pool.asked)


def test_experts_on_host_needs_the_kernels(card_folder: Path) -> None:
    with pytest.raises(OutOfVRAMError, match="needs the CUDA kernels"):
        qformat.load_quantized_into(Transformer(ModelArgs.from_folder(card_folder)), card_folder,
                                    "cpu", torch.float32, expert_slots=3, kernels=False)


@pytest.mark.gpu
@pytest.mark.parametrize("speculative", [False, True], ids=["plain", "speculative"])
def test_streamed_decode_is_one_graph_replay(speculative: bool) -> None:
    """On CUDA the streamed model's decode step is one captured graph (staging filled inside
    it from pinned memory; with speculative prefetch, guesses copied on a second stream
    inside it), and its logits equal the eager step's."""
    seed = time.time_ns() % 2**31
    gen = torch.Generator().manual_seed(seed)
    model = small_quantized_model(gen)
    fastpath.pack_model(model)
    pool = stream_experts(model, slots=8 if speculative else 5, device="cuda",
                          speculative=speculative)
    assert (pool.copy_stream is not None) == speculative
    assert pool.host[0][0].codes.is_pinned()
    graph = fastpath.decode_graph(model)
    assert graph is not None
    prompt = torch.randint(0, 50, (7,), generator=gen).cuda()
    with torch.inference_mode():
        logits = model(prompt[None], torch.arange(7, device="cuda"))[0, -1]
        for i in range(6):
            token = logits.argmax().reshape(1)
            logits = graph.step(model, token, 7 + i).clone()
            eager = model(token.reshape(1, 1), torch.tensor([7 + i], device="cuda"))[0, -1]
            # the eager step wrote the same KV entry again; the graph's logits must match it
            err = float((logits - eager).abs().max() / eager.abs().max())
            assert err < 1e-3, f"seed {seed}, step {i}: relative error {err}"
    assert graph.captures == 1 and graph.replays == 6
    # counted on the device in every run of the step: 6 replays, the capture's 2 warm-up
    # runs and the 6 eager steps, 3 layers, 2 picks each
    assert int(pool.asked) == (6 + 2 + 6) * 3 * 2


@pytest.mark.gpu
def test_a_budget_caps_the_process(card_folder: Path) -> None:
    """Loading with a budget holds torch's allocator to it (less the CUDA context); a load
    without one lifts the cap."""
    from mixdesk.engine.budget import detect_gpu  # noqa: PLC0415

    gpu = detect_gpu()
    assert gpu is not None
    loaded = load_model(card_folder, device="cuda", context=32, budget_gb=2.0)
    fraction = torch.cuda.get_per_process_memory_fraction()
    want = (2e9 - gpu.cuda_context_bytes - budget.KERNEL_MODULES_BYTES) / gpu.total_bytes
    assert fraction == pytest.approx(want, rel=1e-6)
    with pytest.raises(torch.OutOfMemoryError):  # past the cap, torch refuses the allocation
        torch.empty(int(2e9), dtype=torch.uint8, device="cuda")
    del loaded
    load_model(card_folder, device="cuda", context=32)
    assert torch.cuda.get_per_process_memory_fraction() == 1.0
