"""Fused low-bit kernels (Triton) and their torch references.

`mixdesk.kernels.layout` (torch only): `pack`, `stack`, `PackedWeight`, the layout.
`mixdesk.kernels.reference` (torch only): the same functions as the kernels, in fp32.
`mixdesk.kernels.gemv` (imports triton): `gemv`, `moe_decode`.
"""

from mixdesk.kernels.layout import PackedWeight, pack, stack

__all__ = ["PackedWeight", "pack", "stack"]
