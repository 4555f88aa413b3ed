"""A leaner hook for torch than pyinstaller-hooks-contrib's, which takes precedence over it.

The contrib hook lists every torch submodule as a hidden import. Finding them imports
all of torch, module by module, in a subprocess (most of the build's time on two
cores), and pulls in torch.distributed, onnx, the profiler, the test suites and what
they import. Here torch's modules come from ordinary import analysis of what mixdesk and
torch itself import (PyInstaller follows imports inside functions too), plus the
few that torch imports by name. Its libraries, data files and Python sources (TorchScript
and torch.compile read the source) are collected as the contrib hook does.
"""

from PyInstaller.utils.hooks import PY_DYLIB_PATTERNS, collect_data_files, collect_dynamic_libs

module_collection_mode = "pyz+py"
warn_on_missing_hiddenimports = False

datas = collect_data_files(
    "torch",
    excludes=["**/*.h", "**/*.hpp", "**/*.cuh", "**/*.lib", "**/*.cpp", "**/*.pyi",
              "**/*.cmake", "include/**", "share/**"],
)
binaries = collect_dynamic_libs("torch", search_patterns=[*PY_DYLIB_PATTERNS, "*.so.*"])
hiddenimports = [
    # imported by name (importlib / __import__) at start or on first use
    "torch._C", "torch._VF", "torch._meta_registrations", "torch._decomp.decompositions",
    "torch._refs", "torch._prims", "torch.nn.functional", "torch._library",
    "torch._higher_order_ops", "torch.fx.experimental.symbolic_shapes",
]
# see the contrib hook: symlinks from the top level to torch/lib confuse torch's library lookup
bindepend_symlink_suppression = ["**/torch/lib/*.so*"]

# CUDA wheels from PyPI load cuBLAS, cuDNN and the rest from the nvidia-* packages that
# torch requires; list those as hidden imports so their hooks collect the libraries.
try:
    import packaging.requirements
    from _pyinstaller_hooks_contrib.utils import nvidia_cuda
    from importlib.metadata import distribution

    _reqs = [packaging.requirements.Requirement(r) for r in distribution("torch").requires or []]
    hiddenimports += nvidia_cuda.infer_hiddenimports_from_requirements(
        [r.name for r in _reqs if r.marker is None or r.marker.evaluate()])
except Exception:  # CPU wheels have none; Windows and macOS wheels carry their own
    pass
