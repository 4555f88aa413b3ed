"""engine.hqq_import against a genuine hqq 0.1.8 checkpoint.

tests/fixtures/data/hqq018-tiny-mixtral was written by hqq 0.1.8 itself
(tests/fixtures/make_hqq018_fixture.py), with the HQQ Mixtral card's recipe,
and records hqq 0.1.8's own logits and dequantized weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hqq.core.bitpack import BitPack
from safetensors.torch import load_file

from mixdesk.engine.config import ModelArgs
from mixdesk.engine.errors import ModelFormatError
from mixdesk.engine.hqq_import import import_hqq, unpack_hqq_codes
from mixdesk.engine.model import Transformer
from mixdesk.engine.qformat import MANIFEST_NAME, load_quantized_into
from mixdesk.engine.quantize import QuantLinear

FIXTURE = Path(__file__).parents[1] / "fixtures" / "data" / "hqq018-tiny-mixtral"


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return import_hqq(FIXTURE, tmp_path_factory.mktemp("imp") / "card")


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE / "expected.safetensors")


def _load(folder: Path, dtype: torch.dtype) -> Transformer:
    with torch.device("meta"):
        model = Transformer(ModelArgs.from_folder(folder))
    load_quantized_into(model, folder, "cpu", dtype)
    model.setup_cache(32)
    return model.eval()


def test_import_keeps_the_card_recipe(imported: Path) -> None:
    manifest = json.loads((imported / MANIFEST_NAME).read_text())
    entries = {e["pattern"]: e["quant"] for e in manifest["recipe"]["entries"]}
    attn = entries["layers.*.self_attn.*_proj.weight"]
    experts = entries["layers.*.moe.experts.*.w[123].weight"]
    assert (attn["bits"], attn["group"], attn["axis"]) == (4, 64, 0)
    assert (experts["bits"], experts["group"], experts["axis"]) == (2, 8, 0)
    assert experts["meta_bits"] == 8 and experts["meta_group"] == 128
    assert manifest["quantizer"]["version"] == "0.1.x (imported)"
    assert set(manifest["source"]["files"]) == {"qmodel.pt", "config.json"}
    assert manifest["totals"]["bits_per_weight"]["experts"] == pytest.approx(4.0625)


def test_weights_dequantize_as_hqq_018(imported: Path, expected: dict[str, torch.Tensor]) -> None:
    """Same codes and 8-bit meta as hqq 0.1.8 wrote. hqq dequantized the meta in fp16; ours
    does it in fp32 (docs/PERFORMANCE.md: fp16 meta cost KL 1.9e-3), so the fp16 weights
    agree to the rounding of fp16 meta, and in fp32 they are hqq's codes times exact meta."""
    model = _load(imported, torch.float16)
    for name in ("layers.0.self_attn.q_proj.weight", "layers.0.moe.experts.1.w2.weight"):
        layer = model.get_submodule(name.removesuffix(".weight"))
        assert isinstance(layer, QuantLinear)
        ours = layer.dequantize(torch.float16).float()
        assert torch.equal(ours, layer.dequantize(torch.float32).half().float()), name
        scale = float(expected[name].abs().max())
        assert float((ours - expected[name]).abs().max()) <= 4e-3 * scale, name
        assert not torch.equal(ours, torch.zeros_like(ours))


@pytest.mark.filterwarnings("ignore")
def test_imported_checkpoint_runs_on_the_kernels(imported: Path) -> None:
    """hqq 0.1.x's checkpoint, repacked into the kernels' layout (`fastpath.pack_model`, what
    loading on CUDA does), decodes as the torch path: here in the Triton interpreter."""
    from mixdesk.engine import fastpath  # noqa: PLC0415

    slow, fast = _load(imported, torch.float32), _load(imported, torch.float32)
    packed, linears, fused, moes = fastpath.pack_model(fast)
    assert (packed, fused) == (linears, moes) and linears > 0
    assert all(not m.has_torch_copy for m in fast.modules() if isinstance(m, QuantLinear))
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    prompt = torch.randint(0, 128, (1, 5), generator=gen)
    with torch.no_grad():
        want = slow(prompt, torch.arange(5))
        got = fast(prompt, torch.arange(5))  # prefill: Triton dequantize, then matmul
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        token = want[:, -1:].argmax(-1)
        pos = torch.tensor([5])
        torch.testing.assert_close(fast(token, pos), slow(token, pos), atol=1e-4, rtol=1e-4)
    fastpath.disable_kernels(fast)  # the torch copy comes back exactly
    slow_q = slow.get_submodule("layers.1.moe.experts.2.w1")
    fast_q = fast.get_submodule("layers.1.moe.experts.2.w1")
    assert isinstance(slow_q, QuantLinear) and isinstance(fast_q, QuantLinear)
    assert torch.equal(fast_q.dequantize(), slow_q.dequantize())


def test_logits_match_hqq_018(imported: Path, expected: dict[str, torch.Tensor]) -> None:
    ids = expected["input_ids"]
    ref = expected["logits"]  # hqq 0.1.8 + transformers 4.46, fp16 on the CPU
    # hqq rounded its meta to fp16, we do not (either dtype): the bound is fp16 meta's
    for dtype, atol in ((torch.float16, 2e-2), (torch.float32, 2e-2)):
        model = _load(imported, dtype)
        with torch.no_grad():
            got = model(ids, torch.arange(ids.shape[1])).float()
        torch.testing.assert_close(got, ref, atol=atol, rtol=0)
        assert torch.equal(got.argmax(-1), ref.argmax(-1))


@pytest.mark.parametrize(("bits", "packing"), [(8, "8bit_u8"), (4, "4bit_u8"), (3, "3bit_32"),
                                               (2, "2bit_u8"), (1, "1bit_u8")])
@pytest.mark.parametrize("axis", [0, 1])
def test_unpack_reads_every_hqq_packing(bits: int, packing: str, axis: int) -> None:
    group, n = 16, 40
    grouped = (group, n) if axis == 0 else (n, group)
    codes = torch.randint(0, 2**bits, grouped, dtype=torch.uint8)
    pack = {"8bit_u8": BitPack.pack_8bit_u8, "4bit_u8": BitPack.pack_4bit_u8,
            "3bit_32": BitPack.pack_3bit_32, "2bit_u8": BitPack.pack_2bit_u8,
            "1bit_u8": BitPack.pack_1bit_u8}[packing]
    meta = {"packing": packing, "group_size": group, "axis": axis, "shape": [20, 32],
            "view_as_float": False}
    assert torch.equal(unpack_hqq_codes(pack(codes), meta), codes)


def test_damaged_checkpoint_is_named(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(FIXTURE, src)
    data = (src / "qmodel.pt").read_bytes()
    (src / "qmodel.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError, match="qmodel.pt"):
        import_hqq(src, tmp_path / "out")
    (src / "qmodel.pt").unlink()
    with pytest.raises(ModelFormatError, match="qmodel.pt: missing"):
        import_hqq(src, tmp_path / "out2")
