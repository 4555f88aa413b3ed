"""The kernel path of the quantized engine: pack once at load, then fused kernels at batch 1.

On CUDA with triton, `enable_kernels` packs every QuantLinear whose spec and shape
the kernels take (kernels/README.md) into their layout, once, stacks each MoE
layer's experts for `moe_decode`, and drops the torch copy (each weight is held
once). A forward over one token then runs `kernels.gemv.gemv` (attention) and
`kernels.gemv.moe_decode` (experts, ids read on the device: no host sync), and
`decode_graph` captures that whole step in one CUDA graph for `engine.generate`.
Prefill (many rows) dequantizes each matrix from the packed copy with a Triton
kernel (meta in fp32) and runs cuBLAS, tokens grouped by expert.
Anywhere else (CPU, no triton) the torch path stays, and loading says so in one line.

`python -m mixdesk.engine.fastpath` times decode steps of a random Mixtral-shaped
layer stack through both paths (CUDA only).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import os
import time
import weakref
from collections.abc import Callable

import torch
from torch import nn

from mixdesk.engine.config import ModelArgs
from mixdesk.engine.errors import OutOfVRAMError
from mixdesk.engine.model import Attention, Block, MoE, Transformer
from mixdesk.engine.quantize import (
    QuantizedWeight,
    QuantLinear,
    QuantMeta,
    QuantSpec,
    pack_codes,
)
from mixdesk.kernels.layout import (
    META_GROUP,
    PackedWeight,
    check_spec,
    group_grid,
    pack,
    select,
    split_rows,
    stack,
    with_period,
)

log = logging.getLogger("mixdesk.engine.fastpath")


def pack_quantized_weight(qw: QuantizedWeight) -> PackedWeight:
    """engine.quantize.QuantizedWeight (8-bit meta) -> the kernels' layout, on qw's device.

    Codes in the weight's natural layout, meta codes flat in group order, and the
    two fp16 (step, offset) rows of scale and zero stacked into meta [4, C].
    """
    logical = qw.logical()
    return pack(logical["q"], logical["scale_q"], logical["zero_q"],
                logical["meta"].to(torch.float16),
                bits=qw.spec.bits, group=qw.spec.group, axis=qw.spec.axis)


def kernel_reason(spec: QuantSpec, shape: tuple[int, ...]) -> str | None:
    """Why the kernels cannot take a weight of this spec and shape; None when they can."""
    if spec.meta_bits != 8 or spec.meta_group != META_GROUP:
        return f"meta {spec.meta_bits}-bit in groups of {spec.meta_group} is not packed"
    if len(shape) != 2:
        return f"shape {tuple(shape)} is not 2-D"
    try:
        check_spec(spec.bits, spec.group, spec.axis)
        group_grid((int(shape[0]), int(shape[1])), spec.group, spec.axis)
    except ValueError as bad:
        return str(bad)
    return None


def kernels_unavailable(device: torch.device | str) -> str | None:
    """Why the kernels cannot run on `device`; None when they can."""
    if not torch.cuda.is_available():
        return "CUDA not available"
    if torch.device(device).type != "cuda":
        return f"the model is on {torch.device(device).type}"
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    return None


def pack_linear(module: QuantLinear) -> bool:
    """Give `module` its packed copy (on its buffers' device) if the kernels take it."""
    if kernel_reason(module.spec, module.shape) is not None:
        return False
    module.packed = pack_quantized_weight(module.quantized())
    return True


def fuse_experts(moe: MoE) -> bool:
    """Stack a MoE layer's packed experts for `moe_decode`; True when they fit.

    Needs every expert's w1, w2, w3 packed (`pack_linear`) with one spec each. The
    experts' own packed copies are replaced by views into the stacks (`layout.select`):
    decode reads the stacks, prefill dequantizes each chosen expert from its view.
    """
    if moe.gate is None:
        return False
    trios = [[getattr(e, name, None) for name in ("w1", "w3", "w2")] for e in moe.experts]
    flat = [m for trio in trios for m in trio]
    mods = [m for m in flat if isinstance(m, QuantLinear) and m.packed is not None]
    if len(mods) != len(flat):
        return False
    packed = [m.packed for m in mods if m.packed is not None]  # [w1_0, w3_0, w2_0, w1_1, ...]
    try:
        w13 = stack([p for i, p in enumerate(packed) if i % 3 != 2])  # w1/w3 of e at 2e, 2e+1
        w2 = stack(packed[2::3])
    except ValueError:  # w1 and w3 of different specs: the experts stay on the linear path
        return False
    moe.packed = (w13, w2)
    for i, m in enumerate(mods):  # each expert reads its slice of the stacks: w1, w3, w2
        e, which = divmod(i, 3)
        m.packed = select(w2, e) if which == 2 else select(w13, 2 * e + which)
    return True


def fuse_qkv(attn: Attention) -> bool:
    """Stack an attention layer's packed k and v, and q split to their shape, so that one
    token's q, k and v are one GEMV launch (fewer, fuller launches: at the Mixtral shape q
    is 4 matrices of 1024 rows beside k and v, `layout.split_rows`).

    q_proj, k_proj and v_proj keep views into the stack (`layout.select`) for prefill, so
    each weight is held once. Where the meta-meta periods differ and one divides the other
    (axis 1 of Mixtral: q's 32, k's and v's 8), the smaller ones' tables are laid out for
    the larger (`layout.with_period`). q stays its own launch when it does not split to k's
    shape or the periods do not divide;
    nothing changes (False) unless k and v are packed with one spec and shape.
    """
    q, k, v = attn.q_proj, attn.k_proj, attn.v_proj
    if not (isinstance(k, QuantLinear) and isinstance(v, QuantLinear)
            and k.packed is not None and v.packed is not None):
        return False
    tries: list[tuple[int, list[PackedWeight]]] = []  # (q's parts, what to stack), best first
    if isinstance(q, QuantLinear) and q.packed is not None and q.row_parts == 1 \
            and q.out_features % k.out_features == 0 and q.in_features == k.in_features:
        try:
            split = split_rows(q.packed, q.out_features // k.out_features)
            tries.append((split.n_mats, [*(select(split, i) for i in range(split.n_mats)),
                                         k.packed, v.packed]))
        except ValueError:  # q's meta period does not split there: q is its own launch
            pass
    tries.append((0, [k.packed, v.packed]))
    for parts, members in tries:
        top = max(m.period for m in members)
        if all(top % m.period == 0 for m in members):  # axis 1 of Mixtral: q's 32, k's 8
            members[:] = [m if m.period == top else with_period(m, top) for m in members]
        try:
            qkv = stack(members)
        except ValueError:  # another spec or shape, or periods that do not divide
            continue
        break
    else:
        return False
    attn.qkv_packed, attn.q_parts = qkv, parts
    if parts:
        assert isinstance(q, QuantLinear)
        q.packed, q.row_parts = select(qkv, 0, parts), parts
    k.packed, v.packed = select(qkv, parts), select(qkv, parts + 1)
    return True


def pack_model(model: nn.Module, *, drop_torch_copy: bool = True) -> tuple[int, int, int, int]:
    """Pack every QuantLinear the kernels take and fuse each MoE layer's experts.

    With `drop_torch_copy`, each packed matrix drops its torch tensors as soon as it is
    packed, so a weight is held once (prefill dequantizes from the packed copy too) and
    loading never holds two copies of the model.

    Returns:
        (matrices packed, quantized matrices, MoE layers fused, MoE layers).
    """
    linears = [m for m in model.modules() if isinstance(m, QuantLinear)]
    packed = 0
    for m in linears:
        if pack_linear(m):
            packed += 1
            if drop_torch_copy:
                m.drop_torch_copy()
    moes = [m for m in model.modules() if isinstance(m, MoE) and m.gate is not None]
    fused = sum(fuse_experts(m) for m in moes)
    return packed, len(linears), fused, len(moes)


def assign_workspace(model: nn.Module) -> int:
    """Give every GEMV of one token's forward an output slice of one fp32 workspace.

    The attention projections (q, k and v as one slice where `fuse_qkv` stacked them)
    and each fused MoE layer's `moe_decode` add into zeroed
    outputs; `Transformer.forward` zeroes the whole workspace once per one-token step
    (one kernel) instead of a memset per GEMV (7 a layer). Experts of a fused layer run
    through `moe_decode`, so their own QuantLinears get none. Called again when experts
    leave the device (`engine.offload`), it gives their layers' slices back.

    Returns:
        The workspace's size in bytes (0 when the model is not a Transformer or has no
        GEMV to serve).
    """
    if not isinstance(model, Transformer):
        return 0
    model.decode_workspace = None
    outs: list[tuple[QuantLinear | MoE | Attention, list[tuple[int, ...]]]] = []
    for block in model.blocks():
        attn = block.self_attn
        separate = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj]
        if attn.qkv_packed is not None:  # k, v and q (when split): one launch, one slice
            outs.append((attn, [(attn.qkv_packed.n_mats, attn.qkv_packed.shape[0])]))
            separate = [attn.o_proj] if attn.q_parts else [attn.q_proj, attn.o_proj]
        for lin in separate:
            if isinstance(lin, QuantLinear) and lin.packed is not None:
                outs.append((lin, [(lin.out_features,)]))
        moe = block.moe
        if moe.packed is not None:
            ffn, dim = moe.packed[0].shape
            outs.append((moe, [(dim,), (moe.top_k, 2, ffn)]))
    sizes = [math.prod(shape) for _, shapes in outs for shape in shapes]
    if not sizes:
        return 0
    device = model.embed_tokens.weight.device
    workspace = torch.zeros(sum(sizes), dtype=torch.float32, device=device)
    model.decode_workspace = workspace
    start = 0
    for module, shapes in outs:
        views = []
        for shape in shapes:
            views.append(workspace[start:start + math.prod(shape)].view(shape))
            start += math.prod(shape)
        if isinstance(module, MoE):
            module.decode_out = (views[0], views[1])
        elif isinstance(module, Attention):
            module.qkv_out = views[0]
        else:
            module.decode_out = views[0]
    return workspace.numel() * 4


def finish_decode_path(model: nn.Module) -> None:
    """After packing: q, k and v as one launch (`fuse_qkv`), attention over the used cache
    (`kernels.attention`), the residual add, norm and router of a routed layer as one launch
    (`kernels.router`) and the GEMVs' shared workspace (`assign_workspace`); also what
    `engine.bench.synthetic_mixtral` does."""
    for m in model.modules():
        if isinstance(m, Attention):  # decode reads the KV cache up to pos, not all of it
            if m.qkv_packed is None:
                fuse_qkv(m)
            m.decode_kernel = True
        elif isinstance(m, Block) and m.moe.gate is not None:  # add, norm and router: one launch
            m.route_kernel = True
            if isinstance(m.self_attn.o_proj, QuantLinear):  # the router reads o's fp32 output
                m.self_attn.o_proj.keep_fp32 = True
    assign_workspace(model)


def enable_kernels(model: nn.Module, device: torch.device | str) -> str:
    """Pack the model's quantized matrices for the kernels when `device` can run them.

    Logs one info line naming the path and why, and returns it.
    """
    reason = kernels_unavailable(device)
    if reason is not None:
        line = f"{reason}: the torch dequantize path is used"
        log.info("%s", line)
        return line
    packed, linears, fused, moes = pack_model(model)
    finish_decode_path(model)
    line = (f"CUDA: the Triton kernels run batch-1 decode ({packed} of {linears} quantized "
            f"matrices packed, {fused} of {moes} MoE layers fused, attention over the used "
            "cache); prefill dequantizes the packed weights with a Triton kernel into cuBLAS "
            "matmuls")
    if packed < linears:
        line += "; the rest have shapes or specs the kernels do not take (torch path)"
    log.info("%s", line)
    return line


def disable_kernels(model: nn.Module) -> None:
    """Drop every packed copy: the whole model runs the torch dequantize path (and torch
    decode attention)."""
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.restore_torch_copy()
            m.row_parts = 1
            m.keep_fp32 = False
    for m in model.modules():
        if isinstance(m, QuantLinear | MoE):
            m.packed = None
            m.decode_out = None
        elif isinstance(m, Attention):
            m.decode_kernel = False
            m.qkv_packed = m.qkv_out = None
            m.q_parts = 0
        elif isinstance(m, Block):
            m.route_kernel = False
    if isinstance(model, Transformer):
        model.decode_workspace = None
    _GRAPHS.pop(model, None)


# ---------------------------------------------------------------------------- CUDA graph


HOST_RING = 64  # slots of `DecodeGraph.host_tokens`: replays before one is written again


class DecodeGraph:
    """One decode step of a model (forward of one token, all layers, lm_head) as one CUDA graph.

    The graph reads the token and its position from two static device buffers and
    writes the logits into a static buffer; the KV cache is the model's static cache.
    A step copies the token (device to device) and fills the position (a kernel
    argument), then replays: no host sync. Sampling runs on the logits after it, on
    the device (`engine.generate.sample`). The graph ends by writing its logits' argmax
    into the token buffer and advancing the position: greedy decoding hands that token
    back (`greedy_token`) and the next step launches nothing before its replay. It also
    writes the argmax into a ring of pinned host memory (`greedy_written`), where the host
    reads it once the replay is done, with no copy launched between replays.

    Attributes:
        replays: steps run, for tests and stats.
        captures: times the graph was captured (once per model and cache).
    """

    def __init__(self, device: torch.device, *, compile_glue: bool | None = None) -> None:
        if compile_glue is None:
            compile_glue = os.environ.get("MIXDESK_COMPILE_DECODE", "1") != "0"
        self.compile_glue = compile_glue
        self.compiled = False  # the glue did compile (else it runs as plain torch ops)
        self.token = torch.zeros((1, 1), dtype=torch.long, device=device)  # [B, T]
        self.pos = torch.zeros(1, dtype=torch.long, device=device)  # [T]
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None  # [V], in the graph's memory pool
        self.cache_ptr = 0
        self.replays = 0
        self.captures = 0
        self.failed = False
        self.next_pos = -1  # what the pos buffer holds after the last replay (-1: unknown)
        # the replays' argmax by position (`greedy_written`), written by the graph itself
        self.host_tokens = torch.zeros(HOST_RING, dtype=torch.long,
                                       pin_memory=device.type == "cuda")

    def _capture(self, model: Transformer) -> None:
        from mixdesk.kernels.greedy import greedy_next  # noqa: PLC0415 - triton only here

        # torch.compile fuses the step's ~60 small torch ops a layer (norms, RoPE, attention,
        # router, casts) into a few kernels; the low-bit kernels are opaque to it
        # (`torch.compiler.disable`), so each layer is a handful of compiled regions between
        # them. The layers share code, so it compiles once per region, not per layer.
        with torch._dynamo.config.patch(cache_size_limit=64, accumulated_cache_size_limit=512):
            forward = self._warm_up(model)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.logits = forward(model, self.token, self.pos)
                # the next greedy step's token and position, so that it needs no launch of
                # its own before the replay (`greedy_token`, `step`): one launch
                greedy_next(self.logits.contiguous(), self.token, self.pos,
                            host=self.host_tokens)
        self.graph = graph
        self.cache_ptr = _cache_ptr(model)
        self.captures += 1

    def _warm_up(self, model: Transformer) -> Callable[..., torch.Tensor]:
        """Run the step twice on a side stream (compiling it) and return what to capture.

        The warm-up writes the KV cache at the current position with the current token,
        exactly what the replay writes next."""
        forward: Callable[..., torch.Tensor] = _decode_forward
        if self.compile_glue:
            compiled = torch.compile(_decode_forward, dynamic=False)
            try:
                self._run_twice(compiled, model)
                forward, self.compiled = compiled, True
            except Exception as bad:  # noqa: BLE001 - any compiler failure: run uncompiled
                log.warning("torch.compile of the decode step failed (%s: %s); its torch ops "
                            "run uncompiled", type(bad).__name__, str(bad)[:200])
        if not self.compiled:
            self._run_twice(forward, model)
        return forward

    def _run_twice(self, forward: Callable[..., torch.Tensor], model: Transformer) -> None:
        side = torch.cuda.Stream(device=self.token.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                forward(model, self.token, self.pos)
        torch.cuda.current_stream().wait_stream(side)

    def step(self, model: Transformer, token: torch.Tensor, pos: int) -> torch.Tensor:
        """Logits [V] of `token` (a device tensor of one id) at cache position `pos`.

        `token` from `greedy_token` is in place already, and so is `pos` when it follows the
        last replay's: then nothing is launched before the replay."""
        if token.data_ptr() != self.token.data_ptr():
            self.token.copy_(token.reshape(1, 1))
        if pos != self.next_pos:
            self.pos.fill_(pos)
        self.next_pos = -1
        if self.failed:
            return model(self.token, self.pos)[0, -1]
        if self.graph is None or self.cache_ptr != _cache_ptr(model):
            try:
                self._capture(model)
            except torch.OutOfMemoryError:
                raise  # not the graph's fault: generate reports it, the next request recaptures
            except RuntimeError as bad:  # a step that cannot be captured still runs, eagerly
                log.warning("CUDA graph capture failed, decode steps run eagerly: %s", bad)
                self.failed = True
                return model(self.token, self.pos)[0, -1]
        assert self.graph is not None and self.logits is not None
        self.graph.replay()
        self.replays += 1
        self.next_pos = pos + 1
        return self.logits

    def greedy_token(self) -> torch.Tensor | None:
        """The last replay's argmax, [1] on the device, written by the graph into the token
        buffer that the next replay reads (so `step` needs no copy of it); None when the last
        step did not replay (eager after a failed capture). Read it before the next step:
        that step's replay overwrites it (work queued before the step sees this token)."""
        return self.token.view(1) if self.next_pos >= 0 else None

    def greedy_written(self) -> tuple[torch.Tensor, int] | None:
        """Where the last replay also wrote `greedy_token`'s id in pinned host memory: the
        ring and the slot (its position modulo the ring), readable once the replay is done
        (`engine.generate.TokenReadback.start(..., written=)`), until HOST_RING replays
        later; None when the last step did not replay."""
        if self.next_pos < 0:
            return None
        return self.host_tokens, (self.next_pos - 1) % HOST_RING


def _decode_forward(model: Transformer, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    return model(token, pos)[0, -1]  # [V]


def _cache_ptr(model: Transformer) -> int:
    cache = model.blocks()[0].self_attn.kv_cache
    return 0 if cache is None else int(cache.k.data_ptr())


_GRAPHS: weakref.WeakKeyDictionary[nn.Module, DecodeGraph] = weakref.WeakKeyDictionary()


def graph_reason(model: Transformer) -> str | None:
    """Why a decode step of `model` cannot be one CUDA graph; None when it can.

    Every routed MoE layer must run `moe_decode` (the ids stay on the device), from its
    own stacks or through streamed experts (`engine.offload.StreamedMoE`); the torch MoE
    path and the LRU expert cache read them on the host, which a graph cannot capture.
    """
    if os.environ.get("MIXDESK_CUDA_GRAPH", "1") == "0":
        return "MIXDESK_CUDA_GRAPH=0"
    if model.embed_tokens.weight.device.type != "cuda":
        return "the model is not on CUDA"
    if model.cos is None:
        return "no KV cache"
    moes = [m for m in model.modules() if isinstance(m, MoE) and m.gate is not None]
    if any(m.packed is None and not (m.offload is not None and m.offload.graph_safe)
           for m in moes):
        return "some MoE layers read their expert ids on the host (torch path or LRU offload)"
    return None


@torch.inference_mode()
def capture_decode(model: Transformer) -> DecodeGraph | None:
    """Compile and capture the model's decode step now, at load, so that the first answer
    does not pay it mid-stream (9.3 s at the Mixtral-8x7B shape on an H100, most of it
    torch.compile). The capture's warm-up writes KV position 0 with token 0, which every
    prompt's prefill overwrites. None where the step cannot be a graph.

    Raises:
        OutOfVRAMError: the capture ran out of GPU memory.
    """
    graph = decode_graph(model)
    if graph is None:
        return None
    token = torch.zeros(1, dtype=torch.long, device=graph.token.device)
    try:
        graph.step(model, token, 0)
    except torch.OutOfMemoryError:
        raise OutOfVRAMError("the GPU ran out of memory preparing the decode step; close "
                             "programs using the GPU, or load with a smaller --context or "
                             "budget") from None
    return graph


def decode_graph(model: Transformer) -> DecodeGraph | None:
    """The model's DecodeGraph (made once, captured at its first step), or None."""
    graph = _GRAPHS.get(model)
    if graph is None:
        reason = graph_reason(model)
        if reason is not None:
            log.debug("decode steps run eagerly: %s", reason)
            return None
        graph = _GRAPHS[model] = DecodeGraph(model.embed_tokens.weight.device)
        log.info("CUDA: each decode step is one CUDA-graph replay")
    return graph


# ---------------------------------------------------------------------------- bench


def random_quantized(shape: tuple[int, int], spec: QuantSpec, device: torch.device | str
                     ) -> QuantizedWeight:
    """Random codes and meta in `spec` (8-bit meta), shaped like a trained weight's."""
    numel = shape[0] * shape[1]
    n = numel // spec.group
    cols = math.ceil(n / spec.meta_group)
    codes = torch.randint(0, 2**spec.bits, (numel,), dtype=torch.uint8, device=device)

    def meta(lo: float, hi: float) -> QuantMeta:
        step = torch.full((cols,), (hi - lo) / 255, device=device)
        qmeta = torch.stack([step, -lo / step]).half()  # [2, C]
        grid = torch.randint(0, 256, (spec.meta_group, cols), dtype=torch.uint8, device=device)
        return QuantMeta(length=n, codes=grid, qmeta=qmeta)

    top = 2**spec.bits - 1
    return QuantizedWeight(spec, shape, pack_codes(codes, spec.bits),
                           meta(0.002, 0.02), meta(0.0, float(top)))


def random_quantized_model(args: ModelArgs, attention: QuantSpec, experts: QuantSpec,
                           device: str, dtype: torch.dtype) -> Transformer:
    """Our Transformer with random quantized attention and experts (dense rest random)."""
    with torch.device(device):  # built in place: the dense fp32 copy never leaves the device
        model = Transformer(args)
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or name in ("lm_head",) or name.endswith("gate"):
            continue
        spec = attention if "self_attn" in name else experts
        parent, _, leaf = name.rpartition(".")
        qw = random_quantized((module.out_features, module.in_features), spec, device)
        setattr(model.get_submodule(parent), leaf, QuantLinear(qw, dtype=dtype))
    return model.to(dtype).eval()  # fp16 meta and uint8 codes are unchanged


def time_decode(model: Transformer, steps: int) -> float:
    """Seconds a decode step takes (one token, eager), median of `steps` after warm-up."""
    device = model.embed_tokens.weight.device
    token = torch.ones((1, 1), dtype=torch.long, device=device)
    times = []
    with torch.no_grad():
        for i in range(steps + 3):
            pos = torch.tensor([i], device=device)
            torch.cuda.synchronize()
            start = time.perf_counter()
            model(token, pos)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return sorted(times[3:])[len(times[3:]) // 2]


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mixdesk.engine.fastpath")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--recipe", choices=("hqq-card", "4bit-g64"), default="hqq-card")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
    margs = ModelArgs(model_type="mixtral", vocab_size=32000, dim=4096, n_layers=args.layers,
                      n_heads=32, n_kv_heads=8, head_dim=128, ffn_dim=14336, n_experts=8,
                      top_k=2, max_seq_len=256)
    attention = QuantSpec(bits=4, group=64)
    experts = QuantSpec(bits=2, group=8) if args.recipe == "hqq-card" else attention
    torch.manual_seed(0)
    model = random_quantized_model(margs, attention, experts, "cuda", torch.float16)
    model.setup_cache(256)
    torch_s = time_decode(model, max(3, args.steps // 4))
    enable_kernels(model, "cuda")
    kernel_s = time_decode(model, args.steps)
    print(f"Mixtral-8x7B-shaped stack, {args.layers} layers, {args.recipe}, eager decode step "
          f"(no CUDA graph), median:")
    print(f"| path | ms/step | tok/s ({args.layers} layers) | tok/s scaled to 32 layers (rough) |")
    print("|---|---|---|---|")
    for name, s in (("torch dequantize", torch_s), ("Triton kernels", kernel_s)):
        print(f"| {name} | {1e3 * s:.2f} | {1 / s:.1f} | {args.layers / (32 * s):.1f} |")
    print(f"speed-up {torch_s / kernel_s:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())

