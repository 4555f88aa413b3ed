"""Experts in pinned host memory, an LRU cache of them on the GPU, and a copy stream.

When the plan keeps the experts in host memory (`engine.budget`, placement
"experts on host"), each MoE layer's packed stacks (`kernels.layout`: w13 holds
2E matrices, w2 holds E) live in pinned RAM. The GPU holds `slots` experts (their
w1, w3 and w2 together), shared by every layer and evicted least recently used.

A decode step reads its top-k ids on the host (one sync per layer: this path is
bound by the bus, tens of milliseconds a token, so the microseconds of a sync do not
show), copies the missing experts into their slots on a copy stream, and runs
`moe_decode` over the slot pool with the ids mapped to slots. Prefill fetches each
chosen expert once and dequantizes it from its slot into a cuBLAS matmul.

Speculative prefetch (off by default): the next layer's router, applied to this
layer's MoE input, guesses the next layer's experts; they are copied while this layer
computes. A wrong guess costs bus time and may evict a useful expert. Measured on an
H100 (docs/PERFORMANCE.md, 8 Mixtral layers, random routing): the guesses are right
74-91% of the time and raise the hit rate (25% -> 65%, 77% -> 90%), but they copy
more bytes in all (1.09 -> 1.77 GB a token) and the step gets slower (28.6 -> 37.2 ms,
20.0 -> 24.3 ms), so it stays an option until real routing says otherwise.

Streams and events keep it safe: a slot is overwritten only after the compute that
last read it (`used` event), and read only after its copy landed (`ready` event).
On the CPU (tests) there are no streams: copies are plain copies.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mixdesk.kernels.layout import PackedWeight

log = logging.getLogger("mixdesk.engine.offload")


@dataclass
class CacheStats:
    """What the expert cache did, since it was made or last reset.

    Attributes:
        hits: experts asked for that were already on the GPU.
        misses: experts copied because a step needed them now.
        prefetched: experts copied ahead on a guess.
        prefetch_hits: hits on an expert that a guess had brought in.
        bytes_copied: host-to-GPU bytes, demand and prefetch.
    """

    hits: int = 0
    misses: int = 0
    prefetched: int = 0
    prefetch_hits: int = 0
    bytes_copied: int = 0

    @property
    def hit_rate(self) -> float:
        asked = self.hits + self.misses
        return self.hits / asked if asked else 0.0


def stack_bytes(pw: PackedWeight, mats: int = 1) -> int:
    """Bytes of `mats` matrices of a stack: codes, inline or separate meta, meta-meta."""
    one = pw.codes[0].numel() * pw.codes.element_size() + pw.table[0].numel() * 4
    if pw.meta is not None:
        one += pw.meta[0].numel() * pw.meta.element_size()
    return mats * one


def expert_bytes(w13: PackedWeight, w2: PackedWeight) -> int:
    """Bytes one expert takes in the cache: its w1 and w3 (2 matrices) and its w2."""
    return stack_bytes(w13, 2) + stack_bytes(w2, 1)


def _empty_pool(like: PackedWeight, mats: int, device: torch.device) -> PackedWeight:
    def empty(t: Tensor) -> Tensor:
        return torch.empty((mats, *t.shape[1:]), dtype=t.dtype, device=device)

    meta = None if like.meta is None else empty(like.meta)
    return PackedWeight(like.bits, like.group, like.axis, like.shape, empty(like.codes), meta,
                        empty(like.table), like.period)


def _to_host(pw: PackedWeight, pin: bool) -> PackedWeight:
    def host(t: Tensor) -> Tensor:
        t = t.to("cpu")
        return t.pin_memory() if pin and not t.is_pinned() else t

    meta = None if pw.meta is None else host(pw.meta)
    return PackedWeight(pw.bits, pw.group, pw.axis, pw.shape, host(pw.codes), meta,
                        host(pw.table), pw.period)


def _copy_mats(dst: PackedWeight, d0: int, src: PackedWeight, s0: int, n: int) -> None:
    dst.codes[d0:d0 + n].copy_(src.codes[s0:s0 + n], non_blocking=True)
    dst.table[d0:d0 + n].copy_(src.table[s0:s0 + n], non_blocking=True)
    if dst.meta is not None and src.meta is not None:
        dst.meta[d0:d0 + n].copy_(src.meta[s0:s0 + n], non_blocking=True)


def _copy_expert(pool: tuple[PackedWeight, PackedWeight], slot: int,
                 host: tuple[PackedWeight, PackedWeight], expert: int) -> None:
    """Expert `expert` of one layer's host stacks (its w1, w3 and its w2) into pool slot `slot`."""
    _copy_mats(pool[0], 2 * slot, host[0], 2 * expert, 2)
    _copy_mats(pool[1], slot, host[1], expert, 1)


class ExpertCache:
    """Every layer's experts on the host, `slots` of them on the device, LRU.

    Args:
        layers: per MoE layer, its (w13, w2) stacks (any device; moved to the host).
        slots: experts the device holds at once (at least the top-k of one layer).
        device: where the slots live.
        pin: pin the host copies (needs CUDA); default: when `device` is CUDA.
    """

    def __init__(self, layers: Sequence[tuple[PackedWeight, PackedWeight]], slots: int,
                 device: torch.device | str, *, pin: bool | None = None) -> None:
        if not layers:
            raise ValueError("no MoE layers to offload")
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        pin = cuda if pin is None else pin
        self.n_experts = layers[0][1].n_mats
        if slots < 1:
            raise ValueError(f"the cache needs at least one slot, got {slots}")
        self.slots = slots
        self.host = [(_to_host(w13, pin), _to_host(w2, pin)) for w13, w2 in layers]
        first13, first2 = self.host[0]
        self.w13 = _empty_pool(first13, 2 * slots, self.device)
        self.w2 = _empty_pool(first2, slots, self.device)
        self.expert_bytes = expert_bytes(first13, first2)
        self.owner: list[tuple[int, int] | None] = [None] * slots
        self.lru: OrderedDict[tuple[int, int], int] = OrderedDict()  # (layer, expert) -> slot
        self.guessed: set[tuple[int, int]] = set()  # brought in by a guess, not yet asked for
        self.stats = CacheStats()
        self.copy_stream = torch.cuda.Stream(self.device) if cuda else None
        self.ready: list[torch.cuda.Event | None] = [None] * slots
        self.used: list[torch.cuda.Event | None] = [None] * slots

    @property
    def pool_bytes(self) -> int:
        return self.slots * self.expert_bytes

    def resident(self, layer: int) -> dict[int, int]:
        """Expert -> slot for the experts of `layer` on the device now."""
        return {e: s for (lay, e), s in self.lru.items() if lay == layer}

    def _victim(self, protect: set[int]) -> int:
        for slot, key in enumerate(self.owner):
            if key is None and slot not in protect:
                return slot
        for key, slot in self.lru.items():  # oldest first
            if slot not in protect:
                return slot
        raise RuntimeError(f"all {self.slots} cache slots are in use by this step")

    def _load(self, layer: int, expert: int, protect: set[int]) -> int:
        slot = self._victim(protect)
        old = self.owner[slot]
        if old is not None:
            del self.lru[old]
            self.guessed.discard(old)
        self.owner[slot] = (layer, expert)
        self.lru[(layer, expert)] = slot
        if self.copy_stream is None:
            _copy_expert((self.w13, self.w2), slot, self.host[layer], expert)
        else:
            used = self.used[slot]
            if used is not None:  # the last compute that read this slot must be done
                self.copy_stream.wait_event(used)
            with torch.cuda.stream(self.copy_stream):
                _copy_expert((self.w13, self.w2), slot, self.host[layer], expert)
                ready = torch.cuda.Event()
                ready.record(self.copy_stream)
            self.ready[slot] = ready
        self.stats.bytes_copied += self.expert_bytes
        return slot

    def fetch(self, layer: int, experts: Sequence[int]) -> list[int]:
        """Put `experts` of `layer` on the device; return their slots, ready to read.

        The current stream waits for any copy still in flight into those slots.
        """
        slots: list[int] = []
        for e in experts:
            key = (layer, int(e))
            slot = self.lru.get(key)
            if slot is None:
                self.stats.misses += 1
                slot = self._load(layer, int(e), set(slots))
            else:
                self.stats.hits += 1
                if key in self.guessed:
                    self.stats.prefetch_hits += 1
                self.lru.move_to_end(key)
            self.guessed.discard(key)
            slots.append(slot)
        if self.copy_stream is not None:
            stream = torch.cuda.current_stream(self.device)
            for slot in slots:
                ready = self.ready[slot]
                if ready is not None:
                    stream.wait_event(ready)
        return slots

    def prefetch(self, layer: int, experts: Sequence[int], protect: Sequence[int] = ()) -> None:
        """Start copying `experts` of `layer` without waiting; `protect` slots stay put."""
        keep = set(protect)
        for e in experts:
            key = (layer, int(e))
            if key in self.lru:
                keep.add(self.lru[key])
                continue
            if len(keep) >= self.slots:
                return
            keep.add(self._load(layer, int(e), keep))
            self.guessed.add(key)
            self.stats.prefetched += 1

    def mark_used(self, slots: Sequence[int]) -> None:
        """Record that compute now queued reads `slots` (a later copy into them waits)."""
        if self.copy_stream is None:
            return
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        for slot in slots:
            self.used[slot] = event

    def reset_stats(self) -> None:
        self.stats = CacheStats()


class MoEOffload:
    """What `MoE.offload` holds: x [N, D], chosen and weights [N, A] -> [N, D].

    `graph_safe`: a decode step through it reads no ids on the host, so the whole step
    can be one CUDA graph (engine.fastpath)."""

    graph_safe = False

    def __call__(self, x: Tensor, chosen: Tensor, weights: Tensor) -> Tensor:
        raise NotImplementedError


class OffloadedMoE(MoEOffload):
    """One MoE layer's experts through the shared LRU ExpertCache (set as `MoE.offload`).

    Args:
        cache: the shared cache.
        layer: this layer's index in the cache.
        next_gate: the next MoE layer's router, for speculative prefetch (None: off).
    """

    def __init__(self, cache: ExpertCache, layer: int, next_gate: nn.Linear | None) -> None:
        self.cache = cache
        self.layer = layer
        self.next_gate = next_gate

    def __call__(self, x: Tensor, chosen: Tensor, weights: Tensor) -> Tensor:
        """x: [N, D]; chosen, weights: [N, A] (router output). Returns [N, D] in x's dtype."""
        if x.shape[0] == 1:
            return self._decode(x, chosen, weights)
        return self._prefill(x, chosen, weights)

    def _decode(self, x: Tensor, chosen: Tensor, weights: Tensor) -> Tensor:
        from mixdesk.kernels.gemv import moe_decode  # noqa: PLC0415 - triton only here

        cache = self.cache
        ids = chosen[0].tolist()  # the one host sync of this layer
        slots = cache.fetch(self.layer, ids)
        slot_ids = torch.tensor(slots, dtype=torch.int32).to(x.device, non_blocking=True)
        y = moe_decode(x[0], cache.w13, cache.w2, slot_ids, weights[0])  # fp32 [D]
        cache.mark_used(slots)
        if self.next_gate is not None:
            self._guess_next(x, slots)
        return y.to(x.dtype)[None]

    def _guess_next(self, x: Tensor, busy: list[int]) -> None:
        assert self.next_gate is not None
        top_k = len(busy)
        guess = torch.topk(self.next_gate(x[0]), top_k).indices.tolist()
        self.cache.prefetch(self.layer + 1, guess, protect=busy)

    def _prefill(self, x: Tensor, chosen: Tensor, weights: Tensor) -> Tensor:
        cache = self.cache
        return _prefill(x, chosen, weights, cache.n_experts,
                        slot_of=lambda e: cache.fetch(self.layer, [e])[0],
                        pool=(cache.w13, cache.w2), read=lambda slot: cache.mark_used([slot]))


def offload_experts(model: nn.Module, slots: int, device: torch.device | str, *,
                    speculative: bool = False, pin: bool | None = None) -> ExpertCache:
    """Serve every fused MoE layer's experts (`MoE.packed`) through one ExpertCache.

    The stacks move to (pinned) host memory; each MoE gets an `OffloadedMoE` and
    drops its device stacks and its experts' views into them.

    Raises:
        ValueError: a routed MoE layer is not fused (`engine.fastpath.fuse_experts`).
    """
    moes = _moe_layers(model)
    cache = ExpertCache([m.packed for m in moes], slots, device, pin=pin)
    _bind(moes, cache, speculative=speculative)
    _drop_device_experts(moes)
    _shrink_workspace(model)
    log.info("experts in %s host memory, %d of %d on the GPU (%.2f GB cache), "
             "speculative prefetch %s", "pinned" if cache.copy_stream else "plain",
             slots, len(moes) * cache.n_experts, cache.pool_bytes / 1e9,
             "on" if speculative else "off")
    return cache


def rebind(model: nn.Module, cache: ExpertCache, *, speculative: bool) -> None:
    """Point every offloaded MoE layer of `model` at `cache` (another size, prefetch on/off)."""
    from mixdesk.engine.model import MoE  # noqa: PLC0415

    _bind([m for m in model.modules() if isinstance(m, MoE) and m.offload is not None], cache,
          speculative=speculative)


def _bind(moes: Sequence[Any], cache: ExpertCache, *, speculative: bool) -> None:
    """Give each MoE layer, in order, its OffloadedMoE over `cache` (layer i is cache layer i)."""
    for i, moe in enumerate(moes):
        nxt = moes[i + 1].gate if speculative and i + 1 < len(moes) else None
        moe.offload = OffloadedMoE(cache, i, nxt)


# ---------------------------------------------------------------------------- streamed, one graph


class PinnedExperts:
    """Every layer's experts in pinned host memory, a fixed set of them resident on the GPU,
    and top_k staging slots that each decode step fills itself.

    The pool is one pair of stacks on the device: slots 0..resident-1 hold the resident
    experts, spread evenly over the layers (layer l keeps experts 0, 1, ... in turn;
    routing is close to uniform, so which ones matters little), and the last top_k slots
    are staging. A decode step maps its device-side ids to slots (`slots_for`), and
    `kernels.gemv.fill_slots` copies the chosen experts that are not resident from the
    host into staging, the SMs reading pinned memory over the bus (50.7 GB/s of the
    55.0 GB/s DMA rate on an H100). No id reaches the host, so the step is one graph.

    With `guesses`, two more sets of top_k slots sit between the resident ones and
    staging, for speculative prefetch inside the graph (`guess_next`): a layer's MoE input
    through the next layer's router (`guess_routers`) guesses that layer's experts, and
    the guessed ones that are not resident are copied into the next layer's set (sets
    alternate by layer parity) on a second stream while this layer computes. The next
    layer's `slots_for` waits for that copy, then serves each pick from its resident
    slot, else its guess slot, else staging (filled as without guesses). Measured on an
    H100 it is slower at every budget (docs/PERFORMANCE.md, session 8: the wrong guesses'
    copies outweigh the compute they hide), so only the bench turns it on.

    Args:
        layers: per MoE layer, its (w13, w2) stacks (any device; moved to the host).
        resident: experts kept on the device, over all layers.
        top_k: experts a token picks, the staging slots.
        device: where the pool lives.
        pin: pin the host copies (needs CUDA); default: when `device` is CUDA.
        guesses: make the two guess sets and a copy stream for speculative prefetch.

    Attributes:
        hits, asked: device counters of resident picks and all picks in decode steps.
        guess_hits: device counter of picks served by a guess slot.
        guessed: device counter of guessed experts copied (those not resident).
    """

    def __init__(self, layers: Sequence[tuple[PackedWeight, PackedWeight]], resident: int,
                 top_k: int, device: torch.device | str, *, pin: bool | None = None,
                 guesses: bool = False) -> None:
        if not layers:
            raise ValueError("no MoE layers to offload")
        self.device = torch.device(device)
        pin = self.device.type == "cuda" if pin is None else pin
        self.n_experts = layers[0][1].n_mats
        total = len(layers) * self.n_experts
        if not 0 <= resident <= total:
            raise ValueError(f"resident experts must be 0..{total}, got {resident}")
        self.top_k = top_k
        self.n_resident = resident
        self.guess_sets = 2 if guesses else 0
        self.first = resident + self.guess_sets * top_k  # the first staging slot
        slots = self.first + top_k
        self.host = [(_to_host(w13, pin), _to_host(w2, pin)) for w13, w2 in layers]
        first13, first2 = self.host[0]
        self.w13 = _empty_pool(first13, 2 * slots, self.device)
        self.w2 = _empty_pool(first2, slots, self.device)
        self.expert_bytes = expert_bytes(first13, first2)
        slot_of = torch.full((len(layers), self.n_experts), -1, dtype=torch.int32)
        for slot in range(resident):  # round robin: layer slot % L keeps its next expert
            layer, expert = slot % len(layers), slot // len(layers)
            slot_of[layer, expert] = slot
            _copy_expert((self.w13, self.w2), slot, self.host[layer], expert)
        self.slot_of_host = slot_of
        self.slot_of = slot_of.to(self.device)
        self.staging = torch.arange(self.first, slots, dtype=torch.int32, device=self.device)
        self.hits = torch.zeros((), dtype=torch.int64, device=self.device)
        self.asked = torch.zeros((), dtype=torch.int64, device=self.device)
        self.guess_hits = torch.zeros((), dtype=torch.int64, device=self.device)
        self.guessed = torch.zeros((), dtype=torch.int64, device=self.device)
        # per guess set: the guessed ids and where each sits (resident slot or guess slot);
        # fixed buffers, so the copy stream reads what the graph wrote, replay after replay
        self.guess_ids = torch.zeros((2, top_k), dtype=torch.int32, device=self.device)
        self.guess_pos = torch.zeros((2, top_k), dtype=torch.int32, device=self.device)
        # layer l: what it guesses layer l+1's experts with (guess_routers), None: no guess
        self.gates: list[Tensor | None] = [None] * len(layers)
        self.copy_stream = (torch.cuda.Stream(self.device)
                            if guesses and self.device.type == "cuda" else None)

    @property
    def pool_bytes(self) -> int:
        return (self.first + self.top_k) * self.expert_bytes

    @property
    def resident(self) -> int:
        return self.n_resident

    @property
    def speculative(self) -> bool:
        return self.guess_sets > 0 and any(g is not None for g in self.gates)

    def hit_rate(self) -> float:
        """Share of decode picks already on the GPU when their layer ran: resident, or
        brought in by a guess (reads the counters: a host sync)."""
        asked = int(self.asked)
        return (int(self.hits) + int(self.guess_hits)) / asked if asked else 0.0

    def experts_copied(self) -> int:
        """Experts decode steps copied over the bus: missed picks and guesses (a host sync)."""
        return (int(self.asked) - int(self.hits) - int(self.guess_hits)) + int(self.guessed)

    def reset_stats(self) -> None:
        for counter in (self.hits, self.asked, self.guess_hits, self.guessed):
            counter.zero_()

    def slots_for(self, layer: int, ids: Tensor) -> Tensor:
        """Device int32 [k]: each chosen expert's resident slot, else its guess slot (when the
        previous layer guessed it), else its staging slot, and the staging slots filled from
        the host."""
        from mixdesk.kernels.gemv import fill_slots  # noqa: PLC0415 - triton only here

        ids = ids.to(torch.int32)
        k = ids.numel()
        resident = self.slot_of[layer][ids]
        pos = torch.where(resident >= 0, resident, self.staging[:k])
        self.hits += (resident >= 0).sum()
        self.asked += k
        if layer > 0 and self.gates[layer - 1] is not None:  # the previous layer guessed
            if self.copy_stream is not None:
                _join(self.copy_stream)
            guess = self.guess_ids[layer % 2]
            match = ids[:, None] == guess[None, :]  # [k, k]
            found = match.any(dim=1) & (resident < 0)
            guessed_slot = self.guess_pos[layer % 2][match.to(torch.int32).argmax(dim=1)]
            pos = torch.where(found, guessed_slot, pos)
            self.guess_hits += found.sum()
        w13, w2 = self.host[layer]
        for src, dst in _expert_rows(w13, self.w13, mats=2) + _expert_rows(w2, self.w2, mats=1):
            fill_slots(src, dst, ids, pos, self.first)
        return pos

    def guess_next(self, layer: int, x: Tensor) -> None:
        """Guess layer+1's experts from this layer's MoE input x [D] through `gates[layer]`
        (guess_routers: layer+1's router, re-weighted for layer+1's norm), and copy the
        guessed ones that are not resident into its guess set, on the copy stream (CUDA)
        while this layer computes. Nothing for the last layer, or without guess sets."""
        gate = self.gates[layer] if layer < len(self.gates) else None
        if gate is None or not self.guess_sets:
            return
        nxt = layer + 1
        k = self.top_k
        ids = torch.topk(gate @ x.to(gate.dtype), k).indices.to(torch.int32)  # [E, D] @ [D]
        resident = self.slot_of[nxt][ids]
        base = self.n_resident + (nxt % 2) * k
        own = torch.arange(base, base + k, dtype=torch.int32, device=self.device)
        self.guess_ids[nxt % 2].copy_(ids)
        self.guess_pos[nxt % 2].copy_(torch.where(resident >= 0, resident, own))
        self.guessed += (resident < 0).sum()
        ids, pos = self.guess_ids[nxt % 2], self.guess_pos[nxt % 2]
        w13, w2 = self.host[nxt]
        rows = _expert_rows(w13, self.w13, mats=2) + _expert_rows(w2, self.w2, mats=1)
        _fill_on(self.copy_stream, rows, ids, pos, base)

    def stage(self, layer: int, expert: int, staging: int = 0) -> int:
        """The slot holding `expert` of `layer`, copying it into a staging slot if it is not
        resident (prefill, where the ids are on the host)."""
        slot = int(self.slot_of_host[layer, expert])
        if slot >= 0:
            return slot
        slot = self.first + staging
        _copy_expert((self.w13, self.w2), slot, self.host[layer], expert)
        return slot


@torch.compiler.disable  # stream switches stay out of the compiled decode glue
def _join(stream: torch.cuda.Stream) -> None:
    """The current stream waits for everything queued on `stream` so far."""
    torch.cuda.current_stream(stream.device).wait_stream(stream)


@torch.compiler.disable  # stream switches stay out of the compiled decode glue
def _fill_on(stream: torch.cuda.Stream | None, rows: list[tuple[Tensor, Tensor]],
             ids: Tensor, pos: Tensor, first: int) -> None:
    """`fill_slots` of every (host, pool) pair on `stream`, after everything queued so far
    on the current stream: the staging copy of this layer, and the MoE of the layer before
    it with the same parity, the last reader of these guess slots. None: on the current
    stream (no CUDA)."""
    from mixdesk.kernels.gemv import fill_slots  # noqa: PLC0415 - triton only here

    if stream is not None:
        stream.wait_stream(torch.cuda.current_stream(stream.device))
    with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
        for src, dst in rows:
            fill_slots(src, dst, ids, pos, first)


def _expert_rows(host: PackedWeight, pool: PackedWeight, mats: int) -> list[tuple[Tensor, Tensor]]:
    """(host, pool) arrays of a stack viewed as one row per expert (`mats` matrices each)."""
    pairs = [(host.codes, pool.codes), (host.table, pool.table)]
    if host.meta is not None and pool.meta is not None:
        pairs.append((host.meta, pool.meta))
    return [(h.view(h.shape[0] // mats, -1), d.view(d.shape[0] // mats, -1)) for h, d in pairs]


class StreamedMoE(MoEOffload):
    """One MoE layer's experts through PinnedExperts (set as `MoE.offload`): graph-safe."""

    graph_safe = True

    def __init__(self, experts: PinnedExperts, layer: int) -> None:
        self.experts = experts
        self.layer = layer

    def __call__(self, x: Tensor, chosen: Tensor, weights: Tensor) -> Tensor:
        """x: [N, D]; chosen, weights: [N, A] (router output). Returns [N, D] in x's dtype."""
        pool = self.experts
        if x.shape[0] == 1:
            from mixdesk.kernels.gemv import moe_decode  # noqa: PLC0415 - triton only here

            pos = pool.slots_for(self.layer, chosen[0])
            pool.guess_next(self.layer, x[0])  # copies while this layer computes
            y = moe_decode(x[0], pool.w13, pool.w2, pos, weights[0])  # fp32 [D]
            return y.to(x.dtype)[None]
        return _prefill(x, chosen, weights, pool.n_experts,
                        slot_of=lambda e: pool.stage(self.layer, e),
                        pool=(pool.w13, pool.w2))


def _prefill(x: Tensor, chosen: Tensor, weights: Tensor, n_experts: int, *,
             slot_of: Callable[[int], int],
             pool: tuple[PackedWeight, PackedWeight],
             read: Callable[[int], None] | None = None) -> Tensor:
    """Many tokens: each chosen expert once, from its slot (`slot_of(e)` puts it there),
    dequantized into cuBLAS matmuls over the tokens that picked it
    (`engine.model.packed_experts`); `read(slot)` once its slot has been read (queued)."""
    from mixdesk.engine.model import packed_experts  # noqa: PLC0415 - model imports offload's users

    return packed_experts(x, chosen, weights, n_experts, pool, slot_of=slot_of, read=read)


def _routed_moes(model: nn.Module) -> list[Any]:
    """The routed MoE layers, fused or already offloaded."""
    from mixdesk.engine.model import MoE  # noqa: PLC0415 - model imports this module's users

    return [m for m in model.modules() if isinstance(m, MoE) and m.gate is not None]


def _moe_layers(model: nn.Module) -> list[Any]:
    """The routed MoE layers, each fused (its experts in `MoE.packed`), else ValueError."""
    moes = _routed_moes(model)
    if any(m.packed is None for m in moes):
        raise ValueError("every routed MoE layer must be fused before its experts offload")
    return moes


def _drop_device_experts(moes: Sequence[Any]) -> None:
    from mixdesk.engine.quantize import QuantLinear  # noqa: PLC0415

    for moe in moes:
        moe.packed = None
        moe.decode_out = None
        for sub in moe.experts.modules():
            if isinstance(sub, QuantLinear):
                sub.packed = None


def _shrink_workspace(model: nn.Module) -> None:
    """The decode workspace without the slices of layers whose experts left the device."""
    if getattr(model, "decode_workspace", None) is not None:
        from mixdesk.engine.fastpath import assign_workspace  # noqa: PLC0415 - imports model

        assign_workspace(model)


def guess_routers(model: nn.Module) -> list[Tensor | None]:
    """Per routed MoE layer, what speculative prefetch guesses the next layer's experts with
    (None after the last): the next layer's router weight [E, D], its columns scaled by
    that layer's MoE-input RMSNorm weight over this layer's, in fp32. Applied to this
    layer's normed MoE input, it is the next router on this residual normed as the next
    layer norms it. On smol-moe it guesses 72.5% of the next layer's picks against 70.8%
    for the plain next router (tests/bench/guess_accuracy.py; chance: 25%).

    The first layer makes no guess: its input is the embedding, and from it the guess of
    layer 1 was at chance (23%), each wrong guess a wasted expert's copy over the bus."""
    from mixdesk.engine.model import Block  # noqa: PLC0415 - model imports this module's users

    blocks = [m for m in model.modules() if isinstance(m, Block) and m.moe.gate is not None]
    out = [nxt.moe.gate.weight.float() * next_norm_ratio(now, nxt)
           for now, nxt in zip(blocks, blocks[1:], strict=False)]
    return [None, *out[1:], None] if blocks else []


def next_norm_ratio(now: Any, nxt: Any) -> Tensor:
    """fp32 [D]: `model.Block` nxt's MoE-input RMSNorm weight over block now's (0 where now's
    is 0: what it drops cannot be recovered), so that now's normed MoE input times it is
    the same residual normed as nxt norms it."""
    w_now = now.post_attention_layernorm.weight.float()
    w_next = nxt.post_attention_layernorm.weight.float()
    return torch.where(w_now != 0, w_next / w_now, torch.zeros_like(w_now))


def stream_experts(model: nn.Module, slots: int, device: torch.device | str, *,
                   pin: bool | None = None, speculative: bool = False) -> PinnedExperts:
    """Serve every fused MoE layer's experts (`MoE.packed`) from pinned host memory, with
    `slots` of them on the device: top_k staging slots and the rest resident. With
    `speculative`, 2 * top_k of the slots hold guesses (PinnedExperts.guess_next), so
    the same VRAM keeps that many fewer experts resident.

    Raises:
        ValueError: a routed MoE layer is not fused, or too few slots.
    """
    moes = _moe_layers(model)
    top_k = moes[0].top_k if moes else 0
    need = 3 * top_k if speculative else top_k
    if slots < need:
        what = "with speculative prefetch " if speculative else ""
        raise ValueError(f"streaming experts {what}needs at least {need} slots "
                         f"(top_k={top_k}), got {slots}")
    pool = PinnedExperts([m.packed for m in moes], slots - need, top_k, device, pin=pin,
                         guesses=speculative)
    if speculative:
        pool.gates = guess_routers(model)
    for i, moe in enumerate(moes):
        moe.offload = StreamedMoE(pool, i)
    _drop_device_experts(moes)
    _shrink_workspace(model)
    log.info("experts in %s host memory, %d of %d resident on the GPU plus %d staging "
             "(%.2f GB), streamed inside the decode graph, speculative prefetch %s",
             "pinned" if pool.host[0][0].codes.is_pinned() else "plain", pool.resident,
             len(moes) * pool.n_experts, need, pool.pool_bytes / 1e9,
             "on" if speculative else "off")
    return pool


# ---------------------------------------------------------------------------- bench


def _decode_ms(model: Any, steps: int, start: int, gen: torch.Generator) -> float:
    """Mean ms of `steps` eager decode steps of random tokens, each ending in a host read."""
    vocab = model.args.vocab_size
    tokens = torch.randint(0, vocab, (steps,), generator=gen).tolist()
    torch.cuda.synchronize()
    began = time.perf_counter()
    with torch.inference_mode():
        for i, token in enumerate(tokens):
            pos = torch.tensor([start + i], device="cuda")
            logits = model(torch.tensor([[token]], device="cuda"), pos)[0, -1]
            int(logits.argmax())  # generate reads each token on the host
    return (time.perf_counter() - began) / steps * 1e3


def _h2d_gbps() -> float:
    host = torch.empty(512 * 2**20, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty_like(host, device="cuda")
    dev.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(5):
        dev.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    return 5 * host.numel() / (time.perf_counter() - began) / 1e9


def bench_offload(layers: int = 32, fractions: Sequence[float] = (0.25, 0.5, 0.75),
                  steps: int = 24, warmup: int = 8, context: int = 4096) -> dict[str, Any]:
    """Decode speed of the card-recipe Mixtral shape with its experts offloaded (CUDA).

    For each cache size (a fraction of all experts) and with speculative prefetch off
    and on: ms per token, hit rate, bytes copied per token, the bus floor those bytes
    set, and the peak memory allocated, against the resident model's eager step.
    Routing in a random model is close to uniform, the worst case for a cache.
    """
    from mixdesk.engine.bench import synthetic_mixtral  # noqa: PLC0415

    gen = torch.Generator().manual_seed(0)
    model = synthetic_mixtral(layers, context)
    _decode_ms(model, warmup, 0, gen)  # compiles the kernels
    resident_ms = _decode_ms(model, steps, warmup, gen)
    resident_bytes = torch.cuda.memory_allocated()
    h2d = _h2d_gbps()
    total = layers * model.args.n_experts
    host = offload_experts(model, slots=4, device="cuda").host
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    rows = []
    pos = warmup + steps
    for frac in fractions:
        slots = max(4, round(frac * total))
        for speculative in (False, True):
            cache = ExpertCache(host, slots, "cuda")
            rebind(model, cache, speculative=speculative)
            torch.cuda.reset_peak_memory_stats()
            _decode_ms(model, warmup, pos, gen)  # fill the cache
            pos += warmup
            cache.reset_stats()
            ms = _decode_ms(model, steps, pos, gen)
            pos += steps
            st = cache.stats
            copied = st.bytes_copied / steps
            rows.append({
                "cache_fraction": frac, "slots": slots, "speculative": speculative,
                "ms_per_token": round(ms, 2), "tok_s": round(1e3 / ms, 2),
                "hit_rate": round(st.hit_rate, 3),
                "copied_gb_per_token": round(copied / 1e9, 3),
                "bus_floor_ms": round(copied / (h2d * 1e9) * 1e3, 2),
                "pct_of_bus_floor": round(100 * copied / (h2d * 1e9) * 1e3 / ms, 1),
                "pool_gb": round(cache.pool_bytes / 1e9, 2),
                "peak_allocated_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
                "stats": asdict(st)})
            log.info("%s", rows[-1])
            del cache
            torch.cuda.empty_cache()
    return {"layers": layers, "experts": total, "h2d_gbps": round(h2d, 1),
            "resident_ms_per_token_eager": round(resident_ms, 2),
            "resident_allocated_gb": round(resident_bytes / 1e9, 2),
            "offloaded_base_allocated_gb": round(base / 1e9, 2),
            "expert_mb": round(expert_bytes(*host[0]) / 1e6, 1),
            "rows": rows}


def _device_used() -> int:
    """Bytes in use on the GPU, every process and the CUDA context included (what NVML and
    nvidia-smi report; cudaMemGetInfo reads the same counter)."""
    free, total = torch.cuda.mem_get_info()
    return int(total - free)


def bench_budgets(budgets: Sequence[float] = (13.6, 16, 20, 24, 32), layers: int = 32, *,
                  context: int = 4096, prompt: int = 512, steps: int = 32,
                  compile_glue: bool = True, hqq_offload: bool = True,
                  speculative: bool = False) -> dict[str, Any]:
    """The synthetic Mixtral-8x7B (card recipe) at each VRAM budget, as the plan places it.

    Per budget: the plan (`engine.budget.plan`, GPU measured in this process), the budget
    enforced in the process (`budget.cap_process`), a `prompt`-token prefill (timed the
    second time: the time to the first token),
    then `steps` decode steps through the one-graph step as `generate` runs them; measured
    ms/token against the plan's floor, the resident hit rate, torch's peak allocation and
    reservation and the device's memory in use (NVML's counter) against the plan's VRAM.
    Largest budget first: the resident model is measured before its experts leave.
    With `speculative`, each budget whose experts are on the host is measured a second
    time with speculative prefetch (PinnedExperts.guess_next), in the same slots: 2 *
    top_k fewer resident experts.
    """
    from mixdesk.engine.bench import synthetic_mixtral  # noqa: PLC0415
    from mixdesk.engine.budget import (  # noqa: PLC0415
        EXPERTS_ON_HOST,
        ModelSource,
        cap_process,
        measure_gpu,
        plan,
    )

    gpu = measure_gpu(save=False)
    rows: list[dict[str, Any]] = []
    out: dict[str, Any] = {"gpu": asdict(gpu), "layers": layers, "context": context,
                           "prompt": prompt, "steps": steps, "rows": rows,
                           "fill_slots_gbps": round(_fill_rate() / 1e9, 1)}
    gen = torch.Generator(device="cuda").manual_seed(0)
    host: list[tuple[PackedWeight, PackedWeight]] = []

    def to_host(moe: Any) -> None:  # as the loader does: no layer's experts stay on the GPU
        assert moe.packed is not None
        host.append((_to_host(moe.packed[0], True), _to_host(moe.packed[1], True)))
        _drop_device_experts([moe])

    model = synthetic_mixtral(layers, context)
    source = ModelSource("synthetic Mixtral-8x7B", model.args)
    plans = [plan(source, gpu, b, context, recipe="hqq-card", runnable_only=True,
                  prompt_tokens=prompt) for b in sorted(budgets, reverse=True)]
    for p in plans:
        if p.placement == EXPERTS_ON_HOST and not host:  # the resident rows are done
            del model
            torch.cuda.empty_cache()
            model = synthetic_mixtral(layers, context, on_fused=to_host)
        moes = _routed_moes(model)
        for moe in moes:  # the last budget's pool goes before this one is made
            moe.offload = None
        torch.cuda.empty_cache()
        modes = (False, True) if speculative and p.placement == EXPERTS_ON_HOST else (False,)
        for guesses in modes:
            pool = None
            if p.placement == EXPERTS_ON_HOST:
                top_k = model.args.top_k
                pool = PinnedExperts(host, p.expert_slots - (3 if guesses else 1) * top_k,
                                     top_k, "cuda", pin=True, guesses=guesses)
                if guesses:
                    pool.gates = guess_routers(model)
                for i, moe in enumerate(moes):
                    moe.offload = StreamedMoE(pool, i)
            # blocks cached while the pool was built would count against the cap (torch's
            # allocator caps what it reserves): 2026-11-23 every offloaded row ran out of
            # memory with 3.9 GiB reserved and unused when this came before the pool
            torch.cuda.empty_cache()
            cap_process(p)
            tokens = torch.randint(0, model.args.vocab_size, (1, prompt), device="cuda",
                                   generator=gen)
            row = _measure_budget(model, p, pool, tokens, steps, compile_glue=compile_glue)
            rows.append({**row, "speculative": guesses})
            log.info("%s", rows[-1])
            cap_process(None)
            for moe in moes:
                moe.offload = None
            del pool
            torch.cuda.empty_cache()
        # the resident model's MoE layers hold its ~22 GB of experts: kept in `moes` past
        # `del model`, the next budget ran out of memory under its cap (2026-11-23, 32 then 24)
        del moes
    del model
    torch.cuda.empty_cache()
    if hqq_offload:
        out["hqq_offload_meta"] = bench_hqq_offload_meta(layers)
    return out


def _fill_rate(nbytes: int = 2**28) -> float:
    """Bytes per second `fill_slots` moves from pinned host memory into device slots."""
    from mixdesk.kernels.gemv import fill_slots  # noqa: PLC0415

    src = torch.empty((2, nbytes // 8), dtype=torch.int32, pin_memory=True)
    dst = torch.empty((3, nbytes // 8), dtype=torch.int32, device="cuda")
    ids = torch.tensor([0, 1], dtype=torch.int32, device="cuda")
    pos = torch.tensor([1, 2], dtype=torch.int32, device="cuda")
    fill_slots(src, dst, ids, pos, 1)
    torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(5):
        fill_slots(src, dst, ids, pos, 1)
    torch.cuda.synchronize()
    return 5 * nbytes / (time.perf_counter() - began)


def _measure_budget(model: Any, p: Any, pool: PinnedExperts | None, tokens: Tensor, steps: int,
                    *, compile_glue: bool) -> dict[str, Any]:
    """One budget's row of `bench_budgets`: the prefill, then the timed one-graph decode."""
    from mixdesk.engine.bench import time_decode_graph  # noqa: PLC0415

    torch.cuda.reset_peak_memory_stats()
    row: dict[str, Any] = {"budget_gb": p.budget_bytes / 1e9, "placement": p.placement,
                           "expert_slots": p.expert_slots,
                           "predicted_vram_gb": round(p.vram_total / 1e9, 3),
                           "predicted_hit_rate": round(p.expert_hit_rate, 3),
                           "h2d_gb_per_token": round(p.h2d_bytes_per_token / 1e9, 3),
                           "floor_ms": round(1e3 * p.decode_s, 2)}
    try:
        with torch.inference_mode():
            positions = torch.arange(tokens.shape[1], device="cuda")
            model(tokens, positions)  # the prefill, through the pool's staging (warm-up)
            torch.cuda.synchronize()
            began = time.perf_counter()
            int(model(tokens, positions)[0, -1].argmax())  # as generate's first token
            row["ttft_s"] = round(time.perf_counter() - began, 3)
            used = _device_used()
            if pool is not None:
                pool.reset_stats()
            timed = time_decode_graph(model, tokens, positions, steps, compile_glue=compile_glue)
            used = max(used, _device_used())
    except torch.OutOfMemoryError as bad:
        row["error"] = f"out of memory under the budget: {str(bad)[:300]}"
        return row
    ms = timed["decode_ms_per_token"]
    row.update({
        "ms_per_token": round(ms, 2), "tok_s": round(1e3 / ms, 2),
        "replay_ms": round(timed["replay_ms"], 2), "compiled": timed["compiled"],
        "pct_of_floor": round(100 * row["floor_ms"] / ms, 1),
        "hit_rate": round(pool.hit_rate(), 3) if pool is not None else 1.0,
        # per token from the counters' own share: they also count the replays timed alone
        # and the capture's warm-up runs, not only the `steps` tokens
        "bus_gb_per_token": round(_bus_per_token(pool) / 1e9, 3) if pool is not None else 0.0,
        "torch_peak_allocated_gb": round(torch.cuda.max_memory_allocated() / 1e9, 3),
        "torch_peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 1e9, 3),
        "device_used_gb": round(used / 1e9, 3),
        "device_vs_plan_pct": round(100 * (used / p.vram_total - 1), 1),
        "within_budget": used <= p.budget_bytes,
    })
    return row


def _bus_per_token(pool: PinnedExperts) -> float:
    """Bytes over the bus per decode token: experts copied per pick, times a token's picks
    (every layer's top_k) and an expert's bytes (reads the counters)."""
    asked = int(pool.asked)
    picks = len(pool.host) * pool.top_k
    return pool.experts_copied() / asked * picks * pool.expert_bytes if asked else 0.0


def bench_hqq_offload_meta(layers: int = 32) -> dict[str, Any]:
    """hqq 0.2.8's own offloaded-meta path (`offload_meta=True`, the card's quant_zero and
    quant_scale) over exactly the matmuls one decode step does: per layer q, k, v, o at
    4-bit g64 and two experts' w1, w3, w2 at 2-bit g8, axis 0. One layer timed, times
    `layers` (the layers are alike)."""
    from hqq.core.quantize import BaseQuantizeConfig, HQQBackend, HQQLinear  # noqa: PLC0415

    def hqq_linear(n: int, k: int, bits: int, group: int) -> Any:
        linear = nn.Linear(k, n, bias=False, device="cuda", dtype=torch.float16)
        linear.weight.data.normal_(0, 0.02)
        config = BaseQuantizeConfig(nbits=bits, group_size=group, quant_zero=True,
                                    quant_scale=True, offload_meta=True, axis=0)
        return HQQLinear(linear, config, compute_dtype=torch.float16, device="cuda")

    HQQLinear.set_backend(HQQBackend.PYTORCH)
    q, kv = hqq_linear(4096, 4096, 4, 64), hqq_linear(1024, 4096, 4, 64)
    w13, w2 = hqq_linear(14336, 4096, 2, 8), hqq_linear(4096, 14336, 2, 8)
    x = torch.randn(1, 4096, device="cuda", dtype=torch.float16)
    h = torch.randn(1, 14336, device="cuda", dtype=torch.float16)

    def layer() -> None:
        for module in (q, kv, kv, q):
            module(x)
        for _ in range(2):
            w13(x)
            w13(x)
            w2(h)

    with torch.inference_mode():
        layer()
        torch.cuda.synchronize()
        began = time.perf_counter()
        for _ in range(5):
            layer()
        torch.cuda.synchronize()
    per_layer = (time.perf_counter() - began) / 5
    meta_on_host = str(w13.meta.get("zero_scale", torch.empty(0)).device)
    return {"layers": layers, "ms_per_layer": round(per_layer * 1e3, 3),
            "step_ms": round(per_layer * layers * 1e3, 2), "meta_device": meta_on_host}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Offloaded-expert decode bench (CUDA).")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--budgets", help="comma-separated VRAM budgets in GB: the streamed "
                                          "engine at each budget's plan (card recipe)")
    parser.add_argument("--fractions", default="0.25,0.5,0.75",
                        help="without --budgets: the LRU cache at these shares of the experts")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--no-hqq", action="store_true", help="skip hqq's offload_meta path")
    parser.add_argument("--speculative", action="store_true",
                        help="with --budgets: measure each offloaded budget again with "
                             "speculative prefetch, in the same slots")
    parser.add_argument("--out", help="write the results here as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.budgets:
        result = bench_budgets(tuple(float(b) for b in args.budgets.split(",")), args.layers,
                               steps=args.steps, hqq_offload=not args.no_hqq,
                               speculative=args.speculative)
        for row in result["rows"]:
            row_text = ", ".join(f"{k} {v}" for k, v in row.items())
            print(row_text)
        if "hqq_offload_meta" in result:
            print("hqq offload_meta:", result["hqq_offload_meta"])
        return _write(result, args.out)
    fractions = tuple(float(f) for f in args.fractions.split(","))
    result = bench_offload(args.layers, fractions, args.steps)
    print(json.dumps(result, indent=1))
    return _write(result, args.out)


def _write(result: dict[str, Any], path: str | None) -> int:
    if path:
        with open(path, "w") as f:
            f.write(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
