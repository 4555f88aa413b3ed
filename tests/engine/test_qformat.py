"""engine.qformat: the quantize job (progress, cancel, resume after a kill, disk check),
the format's checks on load, and loading into our model."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from mixdesk.engine.checkpoint import save_hub_checkpoint
from mixdesk.engine.config import ModelArgs
from mixdesk.engine.errors import (
    DiskSpaceError,
    JobCancelled,
    ModelFormatError,
    NoGPUError,
    OutputFolderError,
    RecipeError,
)
from mixdesk.engine.model import Transformer
from mixdesk.engine.qformat import (
    JOB_NAME,
    MANIFEST_NAME,
    QuantizeProgress,
    load_quantized_into,
    open_quantized,
    quantize_model,
)
from mixdesk.engine.quantize import QuantLinear

N_LAYERS = 3


def write_tiny_mixtral(folder: Path, seed: int) -> Path:
    """A random Mixtral in hub layout whose groups divide its shapes (attention meta is
    padded: 64 groups per q_proj), sharded so files and layers do not line up."""
    g = torch.Generator().manual_seed(seed)
    dim, ffn, vocab, heads, kv, experts = 64, 128, 96, 4, 2, 4
    hd = dim // heads
    cfg = {"model_type": "mixtral", "architectures": ["MixtralForCausalLM"],
           "vocab_size": vocab, "hidden_size": dim, "intermediate_size": ffn,
           "num_hidden_layers": N_LAYERS, "num_attention_heads": heads,
           "num_key_value_heads": kv, "num_local_experts": experts, "num_experts_per_tok": 2,
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 128,
           "tie_word_embeddings": False}

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.05

    t = {"model.embed_tokens.weight": r(vocab, dim), "model.norm.weight": 1 + r(dim),
         "lm_head.weight": r(vocab, dim)}
    for i in range(N_LAYERS):
        p = f"model.layers.{i}."
        t[p + "self_attn.q_proj.weight"] = r(heads * hd, dim)
        t[p + "self_attn.k_proj.weight"] = r(kv * hd, dim)
        t[p + "self_attn.v_proj.weight"] = r(kv * hd, dim)
        t[p + "self_attn.o_proj.weight"] = r(dim, heads * hd)
        t[p + "input_layernorm.weight"] = 1 + r(dim)
        t[p + "post_attention_layernorm.weight"] = 1 + r(dim)
        t[p + "block_sparse_moe.gate.weight"] = r(experts, dim)
        for e in range(experts):
            q = p + f"block_sparse_moe.experts.{e}."
            t[q + "w1.weight"], t[q + "w2.weight"] = r(ffn, dim), r(dim, ffn)
            t[q + "w3.weight"] = r(ffn, dim)
    save_hub_checkpoint(folder, {k: v.to(torch.bfloat16) for k, v in t.items()}, cfg,
                        max_shard_bytes=150_000)
    (folder / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}"}\n')
    return folder


@pytest.fixture(scope="module")
def tiny_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_mixtral(tmp_path_factory.mktemp("src") / "tiny", seed=int(time.time()))


@pytest.fixture(scope="module")
def quantized(tiny_src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quantize_model(tiny_src, tmp_path_factory.mktemp("q") / "card", "hqq-card")


def _file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.suffix == ".safetensors"}


def _copy(folder: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(folder, out)
    return out


def _load(folder: Path, dtype: torch.dtype = torch.float32) -> Transformer:
    with torch.device("meta"):
        model = Transformer(ModelArgs.from_folder(folder))
    load_quantized_into(model, folder, "cpu", dtype)
    model.setup_cache(32)
    return model.eval()


def test_manifest_describes_the_model(quantized: Path, tiny_src: Path) -> None:
    manifest = json.loads((quantized / MANIFEST_NAME).read_text())
    assert manifest["format_version"] == 1
    assert manifest["recipe"]["name"] == "hqq-card"
    assert manifest["quantizer"] == {"name": "hqq", "version": "0.2.8.post1"}
    assert set(manifest["files"]) == {f"layer-{i:04d}.safetensors" for i in range(N_LAYERS)} | {
        "extra.safetensors"}
    shards = {p.name for p in tiny_src.glob("*.safetensors")}
    assert shards <= set(manifest["source"]["files"])
    assert manifest["config"]["num_local_experts"] == 4
    q = manifest["weights"]["layers.1.self_attn.q_proj.weight"]
    assert q["quant"]["bits"] == 4 and q["quant"]["group"] == 64 and q["kind"] == "attention"
    assert manifest["weights"]["layers.1.moe.gate.weight"]["quant"] is None
    bits = manifest["totals"]["bits_per_weight"]
    assert bits["experts"] == pytest.approx(4.0625)  # 2-bit g8 + 8-bit meta, as DESIGN.md says
    assert bits["router"] == 16.0
    # every file on disk is indexed, and nothing of the job is left behind
    assert not (quantized / JOB_NAME).exists() and not list(quantized.glob("*.partial"))
    assert (quantized / "tokenizer_config.json").is_file() and (quantized / "config.json").is_file()
    total = sum((quantized / f).stat().st_size for f in manifest["files"])
    assert total > manifest["totals"]["total_bytes"]  # headers on top of the tensor bytes


def test_loaded_model_computes_with_dequantized_weights(quantized: Path, tiny_src: Path) -> None:
    model = _load(quantized)
    assert isinstance(model.layers[0].moe.experts[2].w3, QuantLinear)
    assert isinstance(model.layers[2].self_attn.o_proj, QuantLinear)
    assert isinstance(model.layers[0].moe.gate, torch.nn.Linear)
    # the reference: the same model with each QuantLinear turned back into a dense Linear
    with torch.device("meta"):
        dense = Transformer(ModelArgs.from_folder(tiny_src))
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            state[f"{name}.weight"] = module.dequantize(torch.float32)
    state.update({k: v for k, v in model.state_dict().items() if k in dense.state_dict()})
    dense.load_state_dict(state, assign=True)
    dense.setup_cache(32)
    tokens = torch.randint(0, 96, (1, 9))
    with torch.no_grad():
        got = model(tokens, torch.arange(9))
        want = dense.eval()(tokens, torch.arange(9))
    torch.testing.assert_close(got, want)


def test_progress_events(tiny_src: Path, tmp_path: Path) -> None:
    events: list[QuantizeProgress] = []
    quantize_model(tiny_src, tmp_path / "out", "4bit-g64", progress=events.append)
    quantizing = [e for e in events if e.phase == "quantize"]
    assert len(quantizing) == quantizing[-1].tensors_total
    assert [e.tensors_done for e in quantizing] == list(range(1, len(quantizing) + 1))
    assert all(a.bytes_done < b.bytes_done for a, b in zip(quantizing, quantizing[1:]))
    assert events[-1].phase == "done" and events[-1].bytes_done == events[-1].bytes_total
    assert any(e.eta_s is not None and e.eta_s >= 0 for e in quantizing)


def test_cancel_then_resume_gives_identical_files(tiny_src: Path, quantized: Path,
                                                  tmp_path: Path) -> None:
    dest = tmp_path / "job"
    stop = threading.Event()

    def stop_in_second_layer(event: QuantizeProgress) -> None:
        if event.file == "layer-0001.safetensors" and event.phase == "quantize":
            stop.set()

    with pytest.raises(JobCancelled, match="resume"):
        quantize_model(tiny_src, dest, "hqq-card", progress=stop_in_second_layer, cancel=stop)
    # a cancelled job is never taken for a model
    assert not (dest / MANIFEST_NAME).exists() and not list(dest.glob("*.partial"))
    with pytest.raises(ModelFormatError, match="unfinished"):
        open_quantized(dest)
    done = json.loads((dest / JOB_NAME).read_text())["files"]
    assert list(done) == ["layer-0000.safetensors"]

    redone: list[str] = []
    quantize_model(tiny_src, dest, "hqq-card",
                   progress=lambda e: redone.append(e.file) if e.phase == "write" else None)
    assert "layer-0000.safetensors" not in redone
    assert _file_hashes(dest) == _file_hashes(quantized)


_CHILD = """
import sys, time
from pathlib import Path
from mixdesk.engine.qformat import quantize_model
quantize_model(Path(sys.argv[1]), Path(sys.argv[2]), "hqq-card",
               progress=lambda e: time.sleep(0.05))
"""


def test_resume_after_kill_redoes_at_most_one_layer(tiny_src: Path, quantized: Path,
                                                    tmp_path: Path) -> None:
    dest = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tiny_src), str(dest)])
    job = dest / JOB_NAME
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if job.is_file() and json.loads(job.read_text()).get("files"):
                break
            assert child.poll() is None, "the job ended before it could be killed"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    done_at_kill = set(json.loads(job.read_text())["files"])
    on_disk = {p.name for p in dest.glob("*.safetensors")}
    assert done_at_kill and not (dest / MANIFEST_NAME).exists()
    assert len(on_disk - done_at_kill) <= 1  # killed between rename and bookkeeping at worst

    written: list[str] = []
    quantize_model(tiny_src, dest, "hqq-card",
                   progress=lambda e: written.append(e.file) if e.phase == "write" else None)
    redone = [f for f in written if f.endswith(".safetensors")]
    total = N_LAYERS + 1
    assert len(redone) == total - len(done_at_kill)
    assert not set(redone) & done_at_kill
    assert _file_hashes(dest) == _file_hashes(quantized)
    open_quantized(dest)


def test_output_folder_checks(tiny_src: Path, quantized: Path, tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(OutputFolderError, match="not empty"):
        quantize_model(tiny_src, busy, "hqq-card")
    with pytest.raises(OutputFolderError, match="already holds"):
        quantize_model(tiny_src, quantized, "hqq-card")
    with pytest.raises(RecipeError, match="unknown recipe"):
        quantize_model(tiny_src, tmp_path / "x", "5bit-g3")
    if not torch.cuda.is_available():
        with pytest.raises(NoGPUError):
            quantize_model(tiny_src, tmp_path / "y", "hqq-card", device="cuda")
    # an unfinished job only resumes with its own recipe
    stop = threading.Event()
    stop.set()
    with pytest.raises(JobCancelled):
        quantize_model(tiny_src, tmp_path / "job", "hqq-card", cancel=stop)
    with pytest.raises(OutputFolderError, match="recipe"):
        quantize_model(tiny_src, tmp_path / "job", "3bit-g64")


def test_disk_space_is_checked_before_writing(tiny_src: Path, tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    dest = tmp_path / "full"
    with pytest.raises(DiskSpaceError, match="GB free"):
        quantize_model(tiny_src, dest, "hqq-card", disk_margin_bytes=free + 1)
    assert not any(dest.iterdir())


def test_corrupted_layer_file_is_named(quantized: Path, tmp_path: Path) -> None:
    folder = _copy(quantized, tmp_path)
    target = folder / "layer-0001.safetensors"
    data = bytearray(target.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte inside a tensor
    target.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="layer-0001.safetensors.*sha256"):
        _load(folder)


def test_truncated_and_missing_layer_files_are_named(quantized: Path, tmp_path: Path) -> None:
    folder = _copy(quantized, tmp_path)
    target = folder / "layer-0002.safetensors"
    target.write_bytes(target.read_bytes()[:-1000])
    with pytest.raises(ModelFormatError, match="layer-0002.safetensors.*truncated"):
        open_quantized(folder, verify_hashes=False)
    target.unlink()
    with pytest.raises(ModelFormatError, match="layer-0002.safetensors: missing"):
        open_quantized(folder)


def test_damaged_header_is_named_even_without_hashes(quantized: Path, tmp_path: Path) -> None:
    folder = _copy(quantized, tmp_path)
    target = folder / "layer-0000.safetensors"
    data = bytearray(target.read_bytes())
    data[8:12] = b"\xff\xfe\x00\x01"  # the JSON header
    target.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="layer-0000.safetensors"):
        open_quantized(folder, verify_hashes=False)


def test_manifest_version_and_hash_mismatch(quantized: Path, tmp_path: Path) -> None:
    folder = _copy(quantized, tmp_path)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["format_version"] = 2
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ModelFormatError, match="manifest.json: format version 2"):
        open_quantized(folder)
    manifest["format_version"] = 1
    manifest["files"]["extra.safetensors"]["sha256"] = "0" * 64
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ModelFormatError, match="extra.safetensors.*sha256"):
        open_quantized(folder)
    manifest = json.loads((quantized / MANIFEST_NAME).read_text())
    manifest["tensors"]["layers.0.self_attn.q_proj.qweight"]["shape"] = [7]
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ModelFormatError, match="layer-0000.safetensors.*q_proj.qweight.*shape"):
        open_quantized(folder)


def test_model_of_another_shape_is_refused(quantized: Path) -> None:
    args = ModelArgs.from_folder(quantized)
    with torch.device("meta"):
        other = Transformer(type(args)(**{**args.to_dict(), "ffn_dim": 64}))
    with pytest.raises(ModelFormatError, match="layer-0000.safetensors"):
        load_quantized_into(other, quantized, "cpu", torch.float32)


def test_load_model_reads_quantized_folders_and_fidelity(tiny_mixtral: Path,
                                                         tmp_path: Path) -> None:
    from mixdesk.engine.loader import load_model  # noqa: PLC0415
    from mixdesk.engine.quantize import measure_fidelity  # noqa: PLC0415

    # odd dims: experts split into groups of 8 (meta padded), attention stays fp16
    dest = quantize_model(tiny_mixtral, tmp_path / "q", "hqq-card")
    lm = load_model(dest)
    assert any(isinstance(m, QuantLinear) for m in lm.model.modules())
    assert lm.tokenizer is not None and (dest / "tokenizer.json").is_file()
    same = measure_fidelity(tiny_mixtral, tiny_mixtral, prompts=("Hi",), max_new_tokens=6)
    assert same.kl == pytest.approx(0.0, abs=1e-6) and same.top1 == 1.0
    report = measure_fidelity(tiny_mixtral, dest, prompts=("Hi", "What is 2+2?"),
                              max_new_tokens=6)
    assert report.kl > 0 and 0.0 <= report.top1 <= 1.0 and report.positions > 0
    assert report.quant_greedy_ppl_under_ref >= 1.0
