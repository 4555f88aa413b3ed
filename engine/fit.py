"""What the models page and the quantize wizard ask the planner: fit badges, recipe choice.

Pure engine code (no Qt). The planning functions import torch through the planner
(`budget.weight_shapes` builds the model on the meta device), so the GUI calls them
from a background task; the constants and formatters here import nothing heavy.

- `choose_plan`: the recipe for a budget. It prefers a plan today's engine runs
  (everything on the GPU, or the experts in host memory with a GPU cache of them), and
  falls back to a meta-offload plan only when none fits; `Plan.runnable` then says why
  it will not load yet.
- `fit_for`: the models page's badge for one folder on this GPU (or on the CPU).
- `suggested_budget_gb`, `quantize_estimate`: the wizard's defaults and numbers.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mixdesk.engine.errors import MixdeskError, OutOfVRAMError

if TYPE_CHECKING:  # the planner imports torch: only the functions that plan load it
    from mixdesk.engine.budget import GpuInfo, ModelSource, Plan

log = logging.getLogger("mixdesk.engine.fit")

GB = 1e9  # decimal, as engine.budget

DEFAULT_CONTEXT = 4096
SAFETY_MARGIN_BYTES = int(1.0 * GB)  # the desktop, the browser and the driver share the GPU
SAFETY_MARGIN_FRACTION = 0.08
TIGHT_FRACTION = 0.92  # a plan above this share of the card is "yellow": other programs squeeze it
# Quantizing reads every source byte once; hqq's solver dominates. Rates of the whole job
# (hashing, solver, meta quantization, writing) in bytes of bf16 source per second, for the
# wizard's time estimate only. CPU: smol-moe with 4bit-g64 on a 2-core machine, 0.83 MB/s.
# GPU: an H100 on 2 Mixtral-8x7B-shaped layers (tests/bench/gpu_quantize_rate.py), hqq-card
# 288 MB/s and 4bit-g64 508 MB/s; the slower one is kept (consumer cards are slower still).
QUANTIZE_BYTES_PER_S_CPU = 0.8e6
QUANTIZE_BYTES_PER_S_GPU = 288e6

FIDELITY_TOP1 = {"4bit-g64": 72.9, "3bit-g64": 58.8, "hqq-card": 52.8, "2bit-g16": 33.5}
"""Top-1 agreement (%) with the unquantized model on smol-moe, from docs/QUALITY.md; the
planner's RECIPE_KL holds the KL of the same runs."""


@dataclass(frozen=True)
class Fit:
    """One model's badge on the models page.

    Attributes:
        level: "green" (fits with room), "yellow" (fits tight, or only with its experts
            or meta in host memory),
            "red" (does not fit this GPU), "cpu" (no GPU: it runs on the CPU),
            "unknown" (the folder could not be planned).
        text: the badge, a few words.
        detail: a sentence for the tooltip.
        recipe: the recipe the numbers are for (None for red/cpu/unknown).
        tok_s: predicted decode tok/s (the planner's floor), or None.
    """

    level: str
    text: str
    detail: str
    recipe: str | None = None
    tok_s: float | None = None


def default_context(source: ModelSource) -> int:
    return min(source.args.max_seq_len, DEFAULT_CONTEXT)


def suggested_budget_gb(total_bytes: int) -> float:
    """Detected VRAM minus a safety margin, rounded down to 0.5 GB (at least 0.5 GB)."""
    margin = max(SAFETY_MARGIN_BYTES, int(total_bytes * SAFETY_MARGIN_FRACTION))
    return max(0.5, math.floor((total_bytes - margin) / GB * 2) / 2)


def choose_plan(model: str | Path | ModelSource, gpu: GpuInfo | None, budget_gb: float | None,
                context: int, *, recipe: str | None = None,
                host_ram_bytes: int | None = None) -> Plan:
    """The recipe and placement for a budget, preferring what today's engine runs.

    Raises:
        OutOfVRAMError: nothing fits, even with meta in host memory; the message names
            the smallest budget that works.
    """
    from mixdesk.engine.budget import model_source, plan  # noqa: PLC0415 - torch

    source = model_source(model)
    try:
        return plan(source, gpu, budget_gb, context, recipe=recipe,
                    host_ram_bytes=host_ram_bytes, runnable_only=True)
    except OutOfVRAMError:
        return plan(source, gpu, budget_gb, context, recipe=recipe,
                    host_ram_bytes=host_ram_bytes)


def fit_for(folder: Path, gpu: GpuInfo | None, *, quantized: bool,  # noqa: PLR0911
            host_ram_bytes: int | None = None) -> Fit:
    """The badge of one model folder: does it fit this GPU, and how fast would it decode.

    A quantized folder is planned with its own recipe; an unquantized one with the
    recipe the wizard would pick for the whole GPU ("quantize → 4bit-g64").
    """
    if gpu is None:
        return Fit("cpu", "runs on the CPU",
                   "No NVIDIA GPU was found, so this model runs on the CPU: expect a few "
                   "tokens a second on small models, and Mixtral is too slow to chat with.")
    from mixdesk.engine.budget import model_source  # noqa: PLC0415 - torch

    try:
        source = model_source(folder)
        context = default_context(source)
        budget = suggested_budget_gb(gpu.total_bytes)
        fitted = choose_plan(source, gpu, budget, context, host_ram_bytes=host_ram_bytes)
    except OutOfVRAMError as e:
        return Fit("red", f"too big for {_short(gpu.name)}", str(e))
    except MixdeskError as e:
        return Fit("unknown", "cannot plan", str(e))
    except (OSError, ValueError, KeyError) as e:  # an unreadable config.json
        log.warning("cannot plan %s: %s", folder, e)
        return Fit("unknown", "cannot plan", f"{folder.name}: {e}")
    name = fitted.recipe.name
    speed = f"up to {tok_s_text(fitted.tok_s)} tok/s"
    prefix = "" if quantized else f"quantize → {name} · "
    used = f"{fitted.vram_total / GB:.1f} of {gpu.total_bytes / GB:.1f} GB"
    detail = (f"{fitted.model} with {name} ({fitted.placement}), context {fitted.context}: "
              f"{used} of VRAM on the {gpu.name}; decoding reads "
              f"{fitted.hbm_bytes_per_token / GB:.2f} GB per token, so {speed}.")
    if fitted.runnable is not None:
        return Fit("yellow", f"{prefix}needs meta offload", f"{detail} But {fitted.runnable}.",
                   name, fitted.tok_s)
    if fitted.placement != "resident":  # experts in host memory, a GPU cache of them
        return Fit("yellow", f"{prefix}experts on host · {speed}",
                   f"{detail} The experts live in host memory ({fitted.tensors.get('experts')})"
                   ": it runs, slower than a model that fits the GPU.", name, fitted.tok_s)
    if fitted.vram_total > TIGHT_FRACTION * gpu.total_bytes:
        return Fit("yellow", f"{prefix}tight fit · {speed}", detail, name, fitted.tok_s)
    return Fit("green", f"{prefix}fits · {speed}", detail, name, fitted.tok_s)


def tok_s_text(tok_s: float) -> str:
    """'8.4', '42', '3,100', '250k': a predicted speed for a badge (tiny test models are fast)."""
    if tok_s < 100:
        return f"{tok_s:.1f}"
    if tok_s < 1e5:
        return f"{tok_s:,.0f}"
    return f"{tok_s / 1e3:,.0f}k"


def _short(gpu_name: str) -> str:
    return gpu_name.removeprefix("NVIDIA ").split(" ")[0] if gpu_name else "this GPU"


@dataclass(frozen=True)
class QuantizeEstimate:
    """What a quantize job will cost.

    Attributes:
        output_bytes: the quantized folder's tensors (codes and meta, all placements).
        source_bytes: the source weights read.
        seconds: a rough time (QUANTIZE_BYTES_PER_S_*).
    """

    output_bytes: int
    source_bytes: int
    seconds: float


def quantize_estimate(fitted: Plan, source_bytes: int, *, on_gpu: bool) -> QuantizeEstimate:
    output = fitted.vram["weights"] + fitted.vram["meta"] + fitted.host_bytes
    rate = QUANTIZE_BYTES_PER_S_GPU if on_gpu else QUANTIZE_BYTES_PER_S_CPU
    return QuantizeEstimate(output, source_bytes, source_bytes / rate)


def human_duration(seconds: float) -> str:
    """'40 s', '12 min', '2 h 05 min'."""
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"
