"""engine.fastpath: the kernel path of QuantLinear and MoE decode against the torch path.

On the CPU the kernels run in the Triton interpreter (TRITON_INTERPRET=1, set by
tests/conftest.py) on small shapes with fresh random inputs; loading on the CPU
keeps the torch path and says so in one log line.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import torch

from mixdesk.engine import fastpath
from mixdesk.engine.config import ModelArgs
from mixdesk.engine.loader import load_model
from mixdesk.engine.model import MoE, Transformer
from mixdesk.engine.qformat import quantize_model
from mixdesk.engine.quantize import QuantLinear, QuantSpec, quantize_weight
from mixdesk.kernels import attention as kernels_attention
from mixdesk.kernels import gemv as kernels_gemv
from mixdesk.kernels import router as kernels_router

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


# The kernels' 2-bit axis-0 decode is within ~3e-5 of fp64 (tests/kernels/test_gemv.py,
# TWO_BIT_AXIS0); the torch path it is compared with here is fp32.
KERNEL_TOL = 5e-5


def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref.double()).norm() / ref.double().norm())


def quant_linear(shape: tuple[int, int], spec: QuantSpec, gen: torch.Generator) -> QuantLinear:
    w = torch.randn(*shape, generator=gen) / shape[1] ** 0.5
    return QuantLinear(quantize_weight(w, spec), dtype=torch.float32).to(DEVICE)


LINEAR_CASES = [  # (N, K), bits, group, axis: odd K, padded meta groups, both axes
    ((64, 40), 2, 8, 0),
    ((24, 48), 2, 8, 1),
    ((128, 24), 4, 64, 0),
    ((16, 128), 4, 64, 1),
    ((32, 36), 3, 16, 0),
]


@pytest.mark.parametrize(("shape", "bits", "group", "axis"), LINEAR_CASES)
def test_quant_linear_kernel_path_equals_torch_path(shape: tuple[int, int], bits: int,
                                                    group: int, axis: int) -> None:
    gen = torch.Generator().manual_seed(time.time_ns() % 2**31)  # fresh inputs each run
    module = quant_linear(shape, QuantSpec(bits=bits, group=group, axis=axis), gen)
    x = torch.randn(1, 1, shape[1], generator=gen).to(DEVICE)
    prefill = torch.randn(1, 3, shape[1], generator=gen).to(DEVICE)
    ref, ref_prefill = module(x), module(prefill)
    stored = {k: v.clone() for k, v in module.quantized().tensors("w").items()}
    assert fastpath.pack_linear(module) and module.packed is not None
    module.drop_torch_copy()  # the packed copy is the only one now
    assert not module.has_torch_copy
    y = module(x)
    assert y.shape == ref.shape and y.dtype == ref.dtype
    assert rel_error(y, ref) < KERNEL_TOL
    assert rel_error(module(prefill), ref_prefill) < 1e-6  # Triton dequantize, then matmul
    module.restore_torch_copy()  # exactly the tensors it had
    got = module.quantized().tensors("w")
    assert got.keys() == stored.keys()
    assert all(torch.equal(got[k].cpu(), v.cpu()) for k, v in stored.items())


def test_fp16_dequantize_keeps_meta_in_fp32() -> None:
    """The torch path rounds once: fp16 weights are the fp32 ones rounded, not fp16 meta math."""
    gen = torch.Generator().manual_seed(time.time_ns() % 2**31)
    qw = quantize_weight(torch.randn(64, 256, generator=gen) / 16, QuantSpec(bits=2, group=8))
    exact = qw.dequantize(torch.float32)
    assert torch.equal(qw.dequantize(torch.float16), exact.half())
    assert exact.abs().max() > 0


def test_kernel_reason_names_what_the_kernels_do_not_take() -> None:
    card = QuantSpec(bits=2, group=8)
    assert fastpath.kernel_reason(card, (64, 60)) is None
    assert "N % group" in str(fastpath.kernel_reason(card, (84, 60)))  # tiny_mixtral's w1
    assert fastpath.kernel_reason(QuantSpec(bits=2, group=8, meta_bits=None), (64, 64))
    assert fastpath.kernel_reason(QuantSpec(bits=8, group=64), (64, 64))
    assert fastpath.kernel_reason(QuantSpec(bits=4, group=64, axis=1), (64, 96))


def quantized_moe(dim: int, ffn: int, experts: int, spec: QuantSpec,
                  gen: torch.Generator) -> MoE:
    args = ModelArgs(model_type="mixtral", vocab_size=8, dim=dim, n_layers=1, n_heads=1,
                     n_kv_heads=1, head_dim=dim, ffn_dim=ffn, n_experts=experts, top_k=2)
    moe = MoE(args)
    assert moe.gate is not None
    moe.gate.weight.data = torch.randn(experts, dim, generator=gen)
    for expert in moe.experts:
        for name, shape in (("w1", (ffn, dim)), ("w3", (ffn, dim)), ("w2", (dim, ffn))):
            setattr(expert, name, quant_linear(shape, spec, gen))
    return moe.requires_grad_(False).to(DEVICE)


@pytest.mark.parametrize("spec", [QuantSpec(bits=2, group=8), QuantSpec(bits=2, group=8, axis=1),
                                  QuantSpec(bits=4, group=64, axis=1)],
                         ids=["2b-g8-ax0", "2b-g8-ax1", "4b-g64-ax1"])
def test_moe_decode_kernel_path_equals_torch_path(spec: QuantSpec) -> None:
    gen = torch.Generator().manual_seed(time.time_ns() % 2**31)
    moe = quantized_moe(64, 128, 4, spec, gen)
    x = torch.randn(1, 1, 64, generator=gen).to(DEVICE)
    prefill = torch.randn(1, 5, 64, generator=gen).to(DEVICE)
    ref, ref_prefill = moe(x), moe(prefill)
    for module in moe.modules():
        if isinstance(module, QuantLinear):
            assert fastpath.pack_linear(module)
            module.drop_torch_copy()
    assert fastpath.fuse_experts(moe) and moe.packed is not None
    w13, w2 = moe.packed
    for e, expert in enumerate(moe.experts):  # each expert's weights are views of the stacks
        for name, stack_, mat in (("w1", w13, 2 * e), ("w3", w13, 2 * e + 1), ("w2", w2, e)):
            module = getattr(expert, name)
            assert module.packed is not None
            assert module.packed.codes.data_ptr() == stack_.codes[mat].data_ptr()
    assert rel_error(moe(x), ref) < KERNEL_TOL
    # prefill groups tokens by expert, each expert dequantized from its view
    assert rel_error(moe(prefill), ref_prefill) < KERNEL_TOL


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_decode_attention_kernel_path_equals_torch_path(dtype: torch.dtype) -> None:
    """A tiny grouped-query model (4 query heads on 2 kv heads): decode steps after a prefill,
    each run through the torch attention and then through `kernels.attention` (the same
    cache write both times), give the same logits."""
    seed = time.time_ns() % 2**31
    print(f"seed {seed}")
    torch.manual_seed(seed)
    args = ModelArgs(model_type="mixtral", vocab_size=64, dim=32, n_layers=2, n_heads=4,
                     n_kv_heads=2, head_dim=16, ffn_dim=48, n_experts=4, top_k=2)
    model = Transformer(args).to(DEVICE, dtype).requires_grad_(False)
    model.setup_cache(40)
    attention = [b.self_attn for b in model.blocks()]
    prompt = torch.randint(0, 64, (1, 9), device=DEVICE)
    model(prompt, torch.arange(9, device=DEVICE))
    tol = 1e-5 if dtype == torch.float32 else 3e-3  # torch rounds scores and p to fp16
    for at in range(9, 13):
        token = torch.randint(0, 64, (1, 1), device=DEVICE)
        pos = torch.tensor([at], device=DEVICE)
        want = model(token, pos)
        for module in attention:
            module.decode_kernel = True
        got = model(token, pos)
        for module in attention:
            module.decode_kernel = False
        assert got.dtype == want.dtype and rel_error(got, want) < tol, at


def test_fuse_needs_every_expert_packed() -> None:
    gen = torch.Generator().manual_seed(0)
    moe = quantized_moe(64, 128, 2, QuantSpec(bits=2, group=8), gen)
    assert not fastpath.fuse_experts(moe) and moe.packed is None


@pytest.mark.skipif(CUDA, reason="on a GPU the loader takes the kernel path")
def test_cpu_load_keeps_torch_path_and_says_so(tiny_mixtral: Path, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    folder = quantize_model(tiny_mixtral, tmp_path / "card", "hqq-card")
    with caplog.at_level(logging.INFO, logger="mixdesk.engine"):
        lm = load_model(folder, device="cpu")
    lines = [r.getMessage() for r in caplog.records if "dequantize path" in r.getMessage()]
    assert lines == ["CUDA not available: the torch dequantize path is used"]
    assert any(isinstance(m, QuantLinear) for m in lm.model.modules())
    assert all(m.packed is None for m in lm.model.modules() if isinstance(m, QuantLinear | MoE))


@pytest.mark.skipif(CUDA, reason="on a GPU the decode graph is tested in test_fastpath_gpu.py")
def test_no_decode_graph_off_cuda(tiny_mixtral: Path) -> None:
    """On the CPU generate runs eager steps: there is no graph to capture."""
    lm = load_model(tiny_mixtral, device="cpu")
    assert fastpath.graph_reason(lm.model) == "the model is not on CUDA"
    assert fastpath.decode_graph(lm.model) is None


def test_decode_graph_capture_out_of_memory_is_not_a_graph_failure(
        tiny_mixtral: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of memory while capturing propagates (generate turns it into a typed error) and the
    next step tries the graph again; any other capture error falls back to eager steps."""
    lm = load_model(tiny_mixtral, device="cpu", context=16)
    graph = fastpath.DecodeGraph(torch.device("cpu"), compile_glue=False)
    token = torch.tensor([5])

    def out_of_memory(_model: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(graph, "_capture", out_of_memory)
    with torch.inference_mode(), pytest.raises(torch.OutOfMemoryError):
        graph.step(lm.model, token, 0)
    assert not graph.failed

    def broken(_model: object) -> None:
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graph, "_capture", broken)
    with torch.inference_mode():
        logits = graph.step(lm.model, token, 0)
        want = lm.model(token.reshape(1, 1), torch.tensor([0]))[0, -1]
    assert graph.failed and torch.equal(logits, want)


def test_decode_workspace_is_zeroed_once_a_step() -> None:
    """`assign_workspace` hands the one-token GEMVs (q, k, v, o, moe_decode) slices of one
    fp32 workspace that `Transformer.forward` zeroes per step: three decode steps give the
    torch path's logits. A step that skipped the zeroing would add into the last step's
    outputs, and `disable_kernels` gives the slices back."""
    seed = time.time_ns() % 2**31
    print(f"seed {seed}")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    args = ModelArgs(model_type="mixtral", vocab_size=64, dim=32, n_layers=2, n_heads=4,
                     n_kv_heads=2, head_dim=8, ffn_dim=48, n_experts=4, top_k=2)
    model = Transformer(args).requires_grad_(False)
    spec = QuantSpec(bits=2, group=8)
    for block in model.blocks():
        for owner in (block.self_attn, *block.moe.experts):
            for name, child in list(owner.named_children()):
                if isinstance(child, torch.nn.Linear):
                    n_out, n_in = child.weight.shape
                    setattr(owner, name, quant_linear((n_out, n_in), spec, gen))
    model = model.to(DEVICE)
    model.setup_cache(24)
    prompt = torch.randint(0, 64, (1, 6), device=DEVICE)
    steps = [torch.randint(0, 64, (1, 1), device=DEVICE) for _ in range(3)]

    def run() -> list[torch.Tensor]:
        model(prompt, torch.arange(6, device=DEVICE))
        return [model(t, torch.tensor([6 + i], device=DEVICE)) for i, t in enumerate(steps)]

    want = run()
    fastpath.pack_model(model)
    size = fastpath.assign_workspace(model)
    assert model.decode_workspace is not None
    assert size == 4 * 2 * (32 + 16 + 16 + 32 + 32 + 2 * 2 * 48)  # q k v o, moe out and h
    assert all(b.moe.decode_out is not None for b in model.blocks())
    for got, ref in zip(run(), want, strict=True):
        assert rel_error(got, ref) < KERNEL_TOL
    fastpath.disable_kernels(model)
    assert model.decode_workspace is None
    assert all(b.moe.decode_out is None and b.self_attn.q_proj.decode_out is None
               for b in model.blocks())


def assert_stored_equal(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    """A weight's stored tensors rebuilt from its packed copy: codes exactly; the fp16
    meta-meta inverted from the kernels' fp32 table to within an fp16 ulp
    (`layout.meta_from_table`: 1 element in ~20 random weights was an ulp off)."""
    for key, tensor in want.items():
        if key.endswith("qmeta"):
            assert torch.allclose(got[key].cpu(), tensor.cpu(), rtol=2**-10, atol=0), key
        else:
            assert torch.equal(got[key].cpu(), tensor.cpu()), key


@pytest.mark.parametrize(("axis", "dim", "parts", "bits", "group", "launches_a_layer"), [
    # q [32, 32] as 2 matrices of k's [16, 32]: q, k, v; RoPE, cache writes and attention
    # (qkv_attention, -1); o; add_norm (0)
    (0, 32, 2, 2, 8, [4, -1, 1, 0]),
    # q's meta period 4, k's 2: k's and v's tables laid out for 4 (layout.with_period)
    (1, 56, 2, 2, 8, [4, -1, 1, 0]),
    (1, 96, 0, 2, 8, [2, 1, 1, 0]),  # q's meta period 3, k's 5: k and v, then q, then o
    # two words a group at axis 1: x lane-major, written so by the kernel before each GEMV
    (1, 64, 2, 4, 16, [4, -1, 1, 0]),
], ids=["axis0-q-split", "axis1-q-split-periods-lifted", "axis1-kv-only", "axis1-lane-major"])
def test_q_k_v_are_one_launch_and_equal_the_torch_path(  # noqa: PLR0917 - pytest parameters
        monkeypatch: pytest.MonkeyPatch, axis: int, dim: int, parts: int, bits: int, group: int,
        launches_a_layer: list[int]) -> None:
    """`finish_decode_path` stacks each layer's k and v with q split to their shape
    (`fuse_qkv`): a decode step launches one GEMV for q, k and v and one for o per layer, and
    gives the torch path's logits; prefill dequantizes q from the split stack; the q, k and v
    modules read views of the stack; `disable_kernels` rebuilds q's stored tensors
    (`assert_stored_equal`).
    Where q's meta-meta period and k's do not divide, k and v alone share a launch. Where the
    GEMVs read x lane-major, the norm before q/k/v and the attention before o write it so, and
    no GEMV copies it; where the experts read x prepared (2 bits, groups of 8, axis 1), the
    router writes it so."""
    seed = time.time_ns() % 2**31
    print(f"seed {seed}")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    args = ModelArgs(model_type="mixtral", vocab_size=64, dim=dim, n_layers=2, n_heads=4,
                     n_kv_heads=2, head_dim=dim // 4, ffn_dim=48, n_experts=4, top_k=2)
    model = Transformer(args).requires_grad_(False)
    spec = QuantSpec(bits=bits, group=group, axis=axis)
    for block in model.blocks():
        for owner in (block.self_attn, *block.moe.experts):
            for name, child in list(owner.named_children()):
                if isinstance(child, torch.nn.Linear):
                    setattr(owner, name, quant_linear(tuple(child.weight.shape), spec, gen))
    model = model.to(DEVICE)
    model.setup_cache(24)
    stored = [{k: v.clone() for k, v in b.self_attn.q_proj.quantized().tensors("w").items()}
              for b in model.blocks()]
    prompt = torch.randint(0, 64, (1, 6), device=DEVICE)
    steps = [torch.randint(0, 64, (1, 1), device=DEVICE) for _ in range(3)]

    launches: list[int] = []  # matrices a gemv launch covers, decode steps only
    copies: list[int] = []  # x made lane-major or prepared by a GEMV launch of its own

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        first = model(prompt, torch.arange(6, device=DEVICE))
        launches.clear()  # prefill runs an expert picked by one token as a one-row gemv
        copies.clear()
        return first, [model(t, torch.tensor([6 + i], device=DEVICE)) for i, t in enumerate(steps)]

    want_prefill, want = run()
    fastpath.pack_model(model)
    fastpath.finish_decode_path(model)
    for block in model.blocks():
        assert block.route_kernel  # the residual add, norm and router: kernels.router
        assert block.self_attn.o_proj.keep_fp32  # the router rounds o's fp32 output itself
        attn = block.self_attn
        assert attn.q_parts == parts and attn.qkv_packed is not None
        assert attn.qkv_packed.n_mats == parts + 2
        assert attn.qkv_out is not None and attn.qkv_out.shape == (parts + 2, dim // 2)
        base = attn.qkv_packed.codes
        views = [(attn.k_proj, parts), (attn.v_proj, parts + 1)]
        for module, first in [(attn.q_proj, 0)] * bool(parts) + views:
            assert module.packed.codes.data_ptr() == base[first].data_ptr()
    lane_major = axis == 1 and group > 32 // bits  # more than one word a group
    assert [b.self_attn.lane_group() for b in model.blocks()] == [group * lane_major] * 2
    for module, name, log, mark in [  # mark None: the matrices a gemv launch covers
        (kernels_gemv, "_lane_major", copies, 0),
        (kernels_gemv, "prepare_x", copies, 0),
        (kernels_gemv, "gemv", launches, None),
        (kernels_router, "add_norm", launches, 0),  # after the experts: add + next norm
        (kernels_attention, "qkv_attention", launches, -1),  # RoPE, cache writes, attention
    ]:
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _r=real, _l=log, _m=mark, **kw:
                            _l.append(a[1].n_mats if _m is None else _m) or _r(*a, **kw))
    got_prefill, got = run()
    assert launches == launches_a_layer * args.n_layers * len(steps)
    # lane-major from the kernel before, or not read so at all; the experts' x prepared (2-bit
    # g8 at axis 1) by the router
    assert copies == []
    with pytest.raises(ValueError, match="lane-major"):  # two tokens: no GEMV reads them so
        model.blocks()[0].self_attn.o_proj(torch.zeros(1, 2, dim, device=DEVICE),
                                           x_lane_major=True)
    assert rel_error(got_prefill, want_prefill) < KERNEL_TOL
    for g, w in zip(got, want, strict=True):
        assert rel_error(g, w) < KERNEL_TOL
    fastpath.disable_kernels(model)
    for block, tensors in zip(model.blocks(), stored, strict=True):
        q = block.self_attn.q_proj
        assert block.self_attn.qkv_packed is None and q.row_parts == 1
        assert_stored_equal(q.quantized().tensors("w"), tensors)
