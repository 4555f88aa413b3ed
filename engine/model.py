"""Our Mixtral: one decoder for Mixtral, Mistral and Llama (dense = one expert).

gpt-fast style: plain modules, a static KV cache allocated once, shape comments.
Shapes: B batch, T new tokens, S cache length, D dim, H heads, K kv heads,
Hd head dim, F ffn dim, E experts, A active experts (top_k), V vocab.

Every weight matrix is an `nn.Linear` without bias, so quantized loading can
swap a module for its low-bit twin without the model knowing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixdesk.engine.config import ModelArgs
from mixdesk.kernels import reference
from mixdesk.kernels.layout import PackedWeight, merge_rows, select

if TYPE_CHECKING:
    from mixdesk.engine.offload import MoEOffload


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # normalise in fp32, as the reference does, then cast back before the scale
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class KVCache(nn.Module):
    """Static cache: [B, K, S, Hd] for keys and values, allocated once."""

    k: Tensor
    v: Tensor

    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int, *,
                 dtype: torch.dtype, device: torch.device | str | None = None) -> None:
        super().__init__()
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        # pos: [T]; k, v: [B, K, T, Hd]
        self.k[:, :, pos] = k
        self.v[:, :, pos] = v
        return self.k, self.v


def rope_tables(head_dim: int, max_len: int, theta: float, device: torch.device | str | None = None
                ) -> tuple[Tensor, Tensor]:
    """cos and sin, [max_len, Hd], in the half-split layout of HF checkpoints."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device)
                                .float() / head_dim))
    t = torch.arange(max_len, dtype=torch.int64, device=device).float()
    freqs = torch.outer(t, inv_freq)  # [S, Hd/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [S, Hd]
    return emb.cos(), emb.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # x: [B, H, T, Hd]; cos, sin: [T, Hd]
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos.to(x.dtype)) + (rotated * sin.to(x.dtype))


def _lane_group(packed: PackedWeight | None) -> int:
    """The group of a packed weight whose GEMV reads one token's x lane-major, else 0."""
    if packed is None:
        return 0
    from mixdesk.kernels.gemv import reads_lane_major  # noqa: PLC0415 - triton only here

    return packed.group if reads_lane_major(packed) else 0


class Attention(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.q_proj = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.k_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.v_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.o_proj = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)
        self.kv_cache: KVCache | None = None
        # q (split into q_parts matrices of k's shape; 0: q apart), k and v stacked for one
        # GEMV launch of one token (engine.fastpath.fuse_qkv), and that launch's fp32
        # [q_parts + 2, K*Hd] output, a slice of the model's decode workspace
        self.qkv_packed: PackedWeight | None = None
        self.qkv_out: Tensor | None = None
        self.q_parts = 0
        # one token through `kernels.attention.decode_attention` (engine.fastpath sets it on
        # CUDA): it reads cache positions 0..pos, not the whole static cache
        self.decode_kernel = False

    def lane_group(self) -> int:
        """The group whose lane-major order (`kernels.reference.lane_major`) one token's x
        may come in, so that the q/k/v GEMV makes no copy of it (an axis-1 stack of more than
        one word a group reads x so; `kernels.router.add_norm` writes it so); 0: in order."""
        return _lane_group(self.qkv_packed) if self.q_parts else 0  # q apart reads x as it is

    def _o_lane_group(self) -> int:
        """Likewise for o_proj's input, the attention's output (`qkv_attention`'s out_group)."""
        return _lane_group(getattr(self.o_proj, "packed", None))

    def rope_at_pos(self) -> bool:
        """Whether one token's step reads its RoPE rows from the whole cos and sin tables at
        pos itself (`kernels.attention.qkv_attention`): the step then indexes none."""
        return (bool(self.q_parts) and self.qkv_packed is not None and self.decode_kernel
                and self.kv_cache is not None)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, pos: Tensor, *,
                x_lane_major: bool = False) -> Tensor:
        """cos, sin: the rows of x's positions, or for one token where `rope_at_pos` the whole
        tables. mask: the causal mask, which only many tokens read (one reads 0..pos).
        x_lane_major: one token's x comes in `lane_group`'s lane-major order."""
        B, T, _ = x.shape  # noqa: N806
        if x_lane_major and not (B * T == 1 and self.lane_group()):
            raise ValueError("x comes lane-major only to a q/k/v GEMV that reads it so")
        if B * T == 1 and self.qkv_packed is not None:  # kernel path: q, k and v in one launch
            from mixdesk.kernels.gemv import gemv  # noqa: PLC0415 - triton only here

            qkv = gemv(x.reshape(-1), self.qkv_packed, self.qkv_out,
                       x_lane_major=x_lane_major)  # fp32 [Q + 2, K*Hd]
            n = self.q_parts
            if self.rope_at_pos() and self.kv_cache is not None:  # the check narrows for mypy
                # RoPE, q's row order, the cache writes and attention in one launch; its
                # output lane-major where o's GEMV reads it so (no copy between)
                from mixdesk.kernels.attention import qkv_attention  # noqa: PLC0415 - triton

                pw, cache, o_group = self.qkv_packed, self.kv_cache, self._o_lane_group()
                y = qkv_attention(qkv, pos, cache.k, cache.v, cos=cos, sin=sin, parts=n,
                                  group=pw.group, axis=pw.axis, scale=self.head_dim**-0.5,
                                  out_group=o_group)
                return self.o_proj(y.reshape(B, T, -1), x_lane_major=bool(o_group))
            if n:
                pw = self.qkv_packed
                q = merge_rows(qkv[:n], pw.group, pw.axis).to(x.dtype)  # [H*Hd]
            else:
                q = self.q_proj(x)
            q = q.view(B, T, self.n_heads, -1).transpose(1, 2)  # [B, H, T, Hd]
            k = qkv[n].to(x.dtype).view(B, T, self.n_kv_heads, -1).transpose(1, 2)  # [B, K, T, Hd]
            v = qkv[n + 1].to(x.dtype).view(B, T, self.n_kv_heads, -1).transpose(1, 2)
        else:
            q = self.q_proj(x).view(B, T, self.n_heads, -1).transpose(1, 2)  # [B, H, T, Hd]
            k = self.k_proj(x).view(B, T, self.n_kv_heads, -1).transpose(1, 2)  # [B, K, T, Hd]
            v = self.v_proj(x).view(B, T, self.n_kv_heads, -1).transpose(1, 2)  # [B, K, T, Hd]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.kv_cache is not None:
            k, v = self.kv_cache.update(pos, k, v)  # [B, K, S, Hd]
        if T == 1:  # decode: each kv head's cache read once, not copied per query head
            if self.decode_kernel:  # positions 0..pos only, pos read on the device (CUDA graph)
                from mixdesk.kernels.attention import decode_attention  # noqa: PLC0415 - triton
            else:  # the whole static cache, positions past pos masked
                decode_attention = reference.decode_attention
            y = decode_attention(q[:, :, 0], k, v, pos, self.head_dim**-0.5)  # [B, H, Hd]
            return self.o_proj(y.reshape(B, T, -1))
        assert mask is not None, "many tokens take the causal mask"
        rep = self.n_heads // self.n_kv_heads
        used = mask.shape[-1]  # prefill: only the positions written so far (Transformer.forward)
        k = k[:, :, :used].repeat_interleave(rep, dim=1)  # [B, H, U, Hd]
        v = v[:, :, :used].repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, T, Hd]
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class Expert(nn.Module):
    """SwiGLU MLP: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, ffn_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, ffn_dim, bias=False)
        self.w2 = nn.Linear(ffn_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, ffn_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class MoE(nn.Module):
    """Top-k routed experts; softmax over all experts, then the top-k renormalised.

    With `packed` set (engine.fastpath, on CUDA), one token goes through
    `kernels.gemv.moe_decode`: the top-k ids stay on the device, no host sync.
    Many tokens are grouped by expert, which reads the chosen ids on the host. With
    `offload` set (engine.offload), the experts come through a GPU cache of host copies.
    """

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.top_k = args.top_k
        self.gate = nn.Linear(args.dim, args.n_experts, bias=False) if args.is_moe else None
        self.experts = nn.ModuleList(Expert(args.dim, args.ffn_dim) for _ in range(args.n_experts))
        self.packed: tuple[PackedWeight, PackedWeight] | None = None  # (w13 stack, w2 stack)
        # moe_decode's output [D] and h [A, 2, F]: slices of the model's decode workspace
        self.decode_out: tuple[Tensor, Tensor] | None = None
        self.offload: MoEOffload | None = None  # experts in host memory (engine.offload)

    def forward(self, x: Tensor) -> Tensor:
        if self.gate is None:
            return self.experts[0](x)
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # [N, D]
        # one token on the kernel path routes in `kernels.router.route` (Block), not here
        probs = F.softmax(self.gate(x), dim=-1, dtype=torch.float32)  # [N, E]
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)  # [N, A]
        weights = weights / weights.sum(dim=-1, keepdim=True)  # fp32
        return self.run_experts(x, chosen, weights).view(shape)

    def prepared_input(self) -> Tensor | None:
        """A buffer for one token's input as the packed w1/w3 read it, if they read it prepared
        (`kernels.gemv.reads_prepared`: axis 1, groups of 8), for `kernels.router.route` to
        write and `run_experts(..., x_prepared=)` to hand `moe_decode`; else None."""
        if self.packed is None or self.offload is not None:
            return None
        from mixdesk.kernels.gemv import XP_ROWS, reads_prepared  # noqa: PLC0415 - triton only here

        w13 = self.packed[0]
        if not reads_prepared(w13):
            return None
        return torch.empty((XP_ROWS, w13.shape[1] // 8), dtype=torch.float32,
                           device=w13.codes.device)

    def run_experts(self, x: Tensor, chosen: Tensor, weights: Tensor, *,
                    keep_fp32: bool = False, x_prepared: Tensor | None = None) -> Tensor:
        """sum_a weights[:, a] * expert[chosen[:, a]](x) for x [N, D]; weights fp32, normalised.
        `x_prepared`: one token's x as `prepared_input` holds it, written by the router.

        Returns:
            [N, D] in x's dtype; `moe_decode`'s fp32 output as it is with `keep_fp32`.
        """
        if self.offload is not None:  # experts come through the GPU cache, ids read on the host
            return self.offload(x, chosen, weights)
        if self.packed is not None and x.shape[0] == 1:  # decode: ids read on the device
            from mixdesk.kernels.gemv import moe_decode  # noqa: PLC0415 - triton only here

            out, h = self.decode_out or (None, None)
            y = moe_decode(x[0], *self.packed, chosen[0], weights[0], out=out, h=h,
                           x_prepared=x_prepared)  # fp32 [D]
            return (y if keep_fp32 else y.to(x.dtype)).view(1, -1)
        if self.packed is not None:  # CUDA: dequantize from the stacks, one matmul for w1|w3
            return packed_experts(x, chosen, weights, len(self.experts), self.packed)
        groups = group_by_expert(chosen, len(self.experts))
        weights = weights.to(x.dtype)
        out = torch.zeros_like(x)
        for e, a, b in groups.spans:  # as transformers' loop, to the bit
            rows = groups.rows[a:b]
            out.index_add_(0, rows, self.experts[e](x[rows]) * weights[rows, groups.slots[a:b],
                                                                          None])
        return out


@dataclass
class ExpertGroups:
    """Every (token, top-k slot) pick of a batch, grouped by expert (`group_by_expert`).

    Attributes:
        rows: int [N*A], the token of each pick; expert e's picks are rows[a:b] for its span.
        slots: int [N*A], the top-k slot of each pick.
        spans: (expert, a, b) of each expert picked at least once, ascending.
    """

    rows: Tensor
    slots: Tensor
    spans: list[tuple[int, int, int]]


def group_by_expert(chosen: Tensor, n_experts: int) -> ExpertGroups:
    """The tokens each expert was picked for, with one host sync for the whole batch.

    Each expert then runs once on all its tokens, in transformers' row order (top-k slot,
    then token): a matmul rounds each row differently with its place in the batch (up to
    4e-4 on a smol-moe layer, random input). The order comes from one stable sort on the
    device and the counts are read once (`torch.where(chosen.T == e)` read a count on the
    host per expert: 8 syncs a layer, each idling the GPU until the host queued more;
    `torch.bincount` syncs twice more on CUDA).

    Args:
        chosen: int [N, A], each token's top-k expert ids, each < n_experts.
        n_experts: how many experts there are.
    """
    n = chosen.shape[0]
    flat = chosen.T.reshape(-1)  # slot a of token t at a * n + t
    order = torch.sort(flat, stable=True).indices  # by expert, then (slot, token)
    counts = torch.zeros(n_experts, dtype=torch.long, device=flat.device).index_add_(
        0, flat, torch.ones_like(flat)).tolist()  # the one host sync
    spans = []
    start = 0
    for e, count in enumerate(counts):
        if count:
            spans.append((e, start, start + count))
        start += count
    return ExpertGroups(order % n, order // n, spans)


def add_back(out: Tensor, groups: ExpertGroups, ys: Tensor) -> Tensor:
    """out[token] += ys[pick] for every pick, one expert at a time: a token's experts are
    added in ascending order, as a loop over the experts adds them, and no launch adds to a
    row twice (one `index_add_` of all picks would race on CUDA for top-k > 2)."""
    for _, a, b in groups.spans:
        out.index_add_(0, groups.rows[a:b], ys[a:b])
    return out


def packed_experts(x: Tensor, chosen: Tensor, weights: Tensor, n_experts: int,
                   pool: tuple[PackedWeight, PackedWeight], *,
                   slot_of: Callable[[int], int] | None = None,
                   read: Callable[[int], None] | None = None) -> Tensor:
    """Many tokens through the chosen experts of packed stacks (`MoE.packed`, or the slot
    pools of `engine.offload`): the picks gathered once by expert, `run_packed_experts`,
    the routing weights applied and the picks added back (`add_back`).

    Args:
        x: [N, D]; chosen, weights: [N, A] (weights fp32, normalised).
        pool: (w13, w2) stacks; slot_of, read: as `run_packed_experts`.

    Returns:
        [N, D] in x's dtype.
    """
    groups = group_by_expert(chosen, n_experts)
    xs = x[groups.rows]  # [N*A, D], each expert's tokens together
    ys = torch.empty_like(xs)
    run_packed_experts(xs, groups, *pool, ys, slot_of=slot_of, read=read)
    ys *= weights.to(x.dtype)[groups.rows, groups.slots, None]
    return add_back(torch.zeros_like(x), groups, ys)


def run_packed_experts(xs: Tensor, groups: ExpertGroups, w13: PackedWeight, w2: PackedWeight,
                       out: Tensor, *, slot_of: Callable[[int], int] | None = None,
                       read: Callable[[int], None] | None = None) -> None:
    """out[a:b] = w2(silu(w1 xs[a:b]) * w3 xs[a:b]) for each expert's span, from packed stacks.

    Each expert's w1 and w3 are dequantized in one launch (`kernels.gemv.dequantize`) and
    multiplied in one matmul, then its w2: two Triton launches and two cuBLAS calls an expert.

    Args:
        xs: [N*A, D] the picks' inputs, grouped as `groups`.
        w13, w2: the stacks (w1 and w3 of expert e at 2e and 2e + 1; w2 at e).
        out: [N*A, D] in xs's dtype, written.
        slot_of: where expert e is in the stacks (engine.offload puts it there); e if None.
        read: called with the slot once its matmuls are queued (engine.offload).
    """
    from mixdesk.kernels.gemv import dequantize  # noqa: PLC0415 - triton only here

    ffn = w13.shape[0]
    for e, a, b in groups.spans:
        slot = e if slot_of is None else slot_of(e)
        w13_e = dequantize(select(w13, 2 * slot, 2 * slot + 2), dtype=xs.dtype)  # [2, F, D]
        w2_e = dequantize(select(w2, slot), dtype=xs.dtype)  # [D, F]
        h = xs[a:b] @ w13_e.view(2 * ffn, -1).T  # [n, 2F]: w1 x, then w3 x
        torch.mm(F.silu(h[:, :ffn]) * h[:, ffn:], w2_e.T, out=out[a:b])
        if read is not None:
            read(slot)
        del w13_e, w2_e, h  # else the next expert's dequantize allocates beside them


class Block(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.self_attn = Attention(args)
        self.moe = MoE(args)
        self.input_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.post_attention_layernorm = RMSNorm(args.dim, args.norm_eps)
        # one token's residual add, norm and routing as one launch (`kernels.router.route`;
        # engine.fastpath sets it on CUDA for routed MoE layers)
        self.route_kernel = False

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, pos: Tensor) -> Tensor:
        a = self.self_attn(self.input_layernorm(x), cos, sin, mask, pos)
        if self.route_kernel and x.numel() == x.shape[-1]:
            h, normed, chosen, weights = self._route(x, a)
            y = self.moe.run_experts(normed.view(1, -1), chosen.view(1, -1), weights.view(1, -1))
            return (h + y.view(-1)).view(x.shape)
        h = x + a
        return h + self.moe(self.post_attention_layernorm(h))

    def decode(self, x: Tensor, cos: Tensor, sin: Tensor, pos: Tensor, *,
               normed: Tensor, next_norm: RMSNorm, next_lane_group: int = 0
               ) -> tuple[Tensor, Tensor]:
        """One token through the layer on the kernel path (`route_kernel` set), given its
        input already normed (lane-major if `self_attn.lane_group()`); returns the output and
        `next_norm` of it (lane-major for groups of `next_lane_group` if > 0), the residual
        add and that norm one launch (`kernels.router.add_norm`) in place of three kernels."""
        from mixdesk.kernels.router import add_norm  # noqa: PLC0415 - triton only here

        a = self.self_attn(normed, cos, sin, None, pos,  # o_proj's fp32 GEMV output
                           x_lane_major=bool(self.self_attn.lane_group()))
        prepared = self.moe.prepared_input()  # if the experts read x prepared, route writes it
        h, moe_in, chosen, weights = self._route(x, a, prepared)
        y = self.moe.run_experts(moe_in.view(1, -1), chosen.view(1, -1), weights.view(1, -1),
                                 keep_fp32=True, x_prepared=prepared)
        out, out_normed = add_norm(h, y.reshape(-1), next_norm.weight, eps=next_norm.eps,
                                   lane_group=next_lane_group)
        return out.view(x.shape), out_normed.view(x.shape)

    def _route(self, x: Tensor, a: Tensor, prepared: Tensor | None = None
               ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        from mixdesk.kernels.router import route  # noqa: PLC0415 - triton only here

        gate, norm = self.moe.gate, self.post_attention_layernorm
        assert isinstance(gate, nn.Linear), "route_kernel is set on routed layers only"
        packed = self.moe.packed  # prepared is None unless the experts are packed
        return route(x.reshape(-1), a.reshape(-1), norm.weight, gate.weight, eps=norm.eps,
                     top_k=self.moe.top_k, prepared=prepared,
                     prepared_bits=packed[0].bits if packed is not None else 2)


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.lm_head = nn.Linear(args.dim, args.vocab_size, bias=False)
        self.max_len = 0
        # fp32 outputs of one token's GEMVs (engine.fastpath.assign_workspace): zeroed in one
        # kernel per decode step instead of a memset per GEMV (7 a layer)
        self.decode_workspace: Tensor | None = None
        self.cos: Tensor | None = None
        self.sin: Tensor | None = None

    def blocks(self) -> list[Block]:
        return [cast(Block, layer) for layer in self.layers]

    def setup_cache(self, max_len: int, batch: int = 1) -> None:
        """Allocate the KV cache and RoPE tables for `max_len` positions, once."""
        param = self.embed_tokens.weight
        self.max_len = max_len
        for layer in self.blocks():
            layer.self_attn.kv_cache = KVCache(batch, self.args.n_kv_heads, max_len,
                                               self.args.head_dim, dtype=param.dtype,
                                               device=param.device)
        self.cos, self.sin = rope_tables(self.args.head_dim, max_len, self.args.rope_theta,
                                         param.device)

    def forward(self, tokens: Tensor, pos: Tensor) -> Tensor:
        """Logits for `tokens` placed at cache positions `pos`.

        Args:
            tokens: [B, T] token ids.
            pos: [T] their positions; the cache holds every earlier position.

        Returns:
            [B, T, V] logits.
        """
        assert self.cos is not None and self.sin is not None, "call setup_cache first"
        if tokens.numel() == 1 and self.decode_workspace is not None:
            self.decode_workspace.zero_()  # the GEMVs add into their slices
        blocks = self.blocks()
        if tokens.numel() == 1 and blocks and all(b.route_kernel for b in blocks):
            return self._decode_kernels(tokens, pos, blocks)
        x = self.embed_tokens(tokens)  # [B, T, D]
        cos, sin = self.cos[pos], self.sin[pos]  # [T, Hd]
        # causal mask over the whole static cache: position p sees 0..p
        keys = torch.arange(self.max_len, device=pos.device)
        mask = keys[None, :] <= pos[:, None]  # [T, S]
        if tokens.shape[1] > 1:  # prefill: sdpa over the U positions written so far, not S, keeps
            # fp32 logits bit-equal to transformers'; decode keeps the static shape (CUDA graph)
            mask = mask[:, :int(pos.max()) + 1]  # [T, U]
        for layer in self.layers:
            x = layer(x, cos, sin, mask, pos)
        return self.lm_head(self.norm(x))

    def _decode_kernels(self, tokens: Tensor, pos: Tensor, blocks: list[Block]) -> Tensor:
        """One token on the kernel path (every block's `route_kernel` set): the embedding row
        and the first norm in one launch (`kernels.router.embed_norm`), each layer's normed
        input lane-major where its q/k/v GEMV reads it so (written so by the layer before's
        add_norm: no copy between), the RoPE tables whole where every attention reads its rows
        at pos (`Attention.rope_at_pos`), no causal mask (one token reads 0..pos), and the
        lm_head as `kernels.dense.dense_gemv`."""
        from mixdesk.kernels.dense import dense_gemv  # noqa: PLC0415 - triton only here
        from mixdesk.kernels.router import embed_norm  # noqa: PLC0415

        assert self.cos is not None and self.sin is not None
        groups = [block.self_attn.lane_group() for block in blocks] + [0]
        first = blocks[0].input_layernorm
        x, normed = embed_norm(tokens, self.embed_tokens.weight, first.weight, eps=first.eps,
                               lane_group=groups[0])
        x, normed = x.view(1, 1, -1), normed.view(1, 1, -1)
        if all(block.self_attn.rope_at_pos() for block in blocks):
            cos, sin = self.cos, self.sin
        else:
            cos, sin = self.cos[pos], self.sin[pos]  # [1, Hd]
        for i, block in enumerate(blocks):
            last = i + 1 == len(blocks)
            x, normed = block.decode(
                x, cos, sin, pos, normed=normed,
                next_norm=self.norm if last else blocks[i + 1].input_layernorm,
                next_lane_group=groups[i + 1])
        return dense_gemv(normed, self.lm_head.weight).view(1, 1, -1)  # on the PDL chain

