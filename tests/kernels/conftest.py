"""Kernel tests run the Triton kernels in the interpreter when there is no CUDA GPU.

TRITON_INTERPRET is read when `@triton.jit` decorates, so it is set here, before
the test modules import the kernels; a copy imported earlier is reloaded.
"""

from __future__ import annotations

import importlib
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
    for name in ("mixdesk.kernels.gemv", "mixdesk.kernels.attention"):  # attention imports gemv
        if name in sys.modules:
            importlib.reload(sys.modules[name])
