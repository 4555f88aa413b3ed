"""Session fixtures: model folders built once and cached under <repo>/.cache/fixtures.

A cached fixture is `<name>-v<version>/` holding a `.complete` marker. It is
built in a sibling temporary folder and renamed into place, under a file lock,
so parallel pytest runs in one checkout build it once and never see half of it.
"""

from __future__ import annotations

import os

# Before anything imports huggingface_hub or Qt: tests never reach a hub and
# never open a window.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["QT_QPA_PLATFORM"] = "offscreen"

import torch  # noqa: E402

# Triton reads TRITON_INTERPRET when `@triton.jit` decorates, so it must be set
# before any test module imports a kernel: without a GPU, kernels run in the
# interpreter.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import shutil  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

try:
    import fcntl
except ImportError:  # Windows: no cross-process lock; the rename still keeps the cache whole
    fcntl = None  # type: ignore[assignment]

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:  # `fixtures.builders` is importable whatever the import mode
    sys.path.insert(0, str(TESTS))

CACHE = TESTS.parent / ".cache" / "fixtures"
COMPLETE = ".complete"


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # the lock goes with the file handle


def cached_fixture(name: str) -> Path:
    """Build fixture `name` into the cache unless a complete copy is there.

    Args:
        name: a key of `fixtures.builders.FIXTURES`.

    Returns:
        The cached model folder.
    """
    # imported here, not at the top: it pulls in transformers, which most tests never need
    from fixtures.builders import FIXTURES  # noqa: PLC0415

    builder, version = FIXTURES[name]
    folder = CACHE / f"{name}-v{version}"
    if (folder / COMPLETE).is_file():
        return folder
    with _locked(CACHE / f"{name}-v{version}.lock"):
        if (folder / COMPLETE).is_file():  # another run built it while we waited
            return folder
        building = CACHE / f"{name}-v{version}.building-{os.getpid()}"
        shutil.rmtree(building, ignore_errors=True)
        builder(building)
        (building / COMPLETE).write_text(f"{name} v{version}\n")
        shutil.rmtree(folder, ignore_errors=True)  # an incomplete leftover
        building.rename(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_mixtral() -> Path:
    """Random Mixtral, odd dims, 4 shards + index, fp32 (tests/fixtures/builders.py)."""
    return cached_fixture("tiny-random-mixtral")


@pytest.fixture(scope="session")
def dense_mistral() -> Path:
    """Random dense Mistral in a single model.safetensors, fp32."""
    return cached_fixture("dense-mistral")


@pytest.fixture(scope="session")
def smol_moe() -> Path:
    """The real-weight demo model (SmolLM2-135M as 8-expert Mixtral, bf16). Mark users slow."""
    return cached_fixture("smol-moe")
