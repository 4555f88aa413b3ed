"""The test fixtures: hub layout and naming, transformers loads them, tokenizers work."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from jinja2.exceptions import TemplateError
from safetensors import safe_open
from transformers import AutoTokenizer, MistralForCausalLM, MixtralForCausalLM

from fixtures.builders import build_dense_mistral, build_tiny_random_mixtral, build_tiny_tokenizer
from mixdesk.engine.checkpoint import INDEX_NAME, SINGLE_NAME, Checkpoint

SHARD = re.compile(r"^model-(\d{5})-of-(\d{5})\.safetensors$")

# smol-moe's load is checked in test_demo.py, beside its answer: one 3 GB load, not two
CASES = [("tiny_mixtral", MixtralForCausalLM), ("dense_mistral", MistralForCausalLM)]


def expected_names(cfg: dict[str, Any]) -> set[str]:
    """Every tensor name a hub checkpoint of this config holds (Mixtral or dense)."""
    names = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}"
        names |= {f"{p}.self_attn.{x}_proj.weight" for x in "qkvo"}
        names |= {f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight"}
        if cfg["model_type"] == "mixtral":
            names.add(f"{p}.block_sparse_moe.gate.weight")
            names |= {
                f"{p}.block_sparse_moe.experts.{e}.{w}.weight"
                for e in range(cfg["num_local_experts"])
                for w in ("w1", "w2", "w3")
            }
        else:
            names |= {f"{p}.mlp.{x}_proj.weight" for x in ("gate", "up", "down")}
    return names


def read_config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text())


def test_tiny_mixtral_is_sharded_in_hub_layout(tiny_mixtral: Path) -> None:
    cfg = read_config(tiny_mixtral)
    index = json.loads((tiny_mixtral / INDEX_NAME).read_text())
    weight_map = index["weight_map"]
    assert set(weight_map) == expected_names(cfg)
    shards = sorted(set(weight_map.values()))
    assert len(shards) >= 3
    assert all(SHARD.match(s) and SHARD.match(s).group(2) == f"{len(shards):05d}" for s in shards)
    assert not (tiny_mixtral / SINGLE_NAME).exists()
    total = 0
    for shard in shards:  # each shard holds exactly what the index places there
        with safe_open(str(tiny_mixtral / shard), framework="pt") as handle:
            keys = set(handle.keys())
            assert keys == {n for n, s in weight_map.items() if s == shard}
            for key in keys:
                tensor = handle.get_tensor(key)
                assert tensor.dtype == torch.float32
                total += tensor.numel() * tensor.element_size()
    assert index["metadata"]["total_size"] == total


def test_tiny_mixtral_dims_are_odd_on_purpose(tiny_mixtral: Path) -> None:
    cfg = read_config(tiny_mixtral)
    assert cfg["model_type"] == "mixtral" and cfg["architectures"] == ["MixtralForCausalLM"]
    assert cfg["num_attention_heads"] * cfg["head_dim"] == cfg["hidden_size"]
    assert cfg["num_attention_heads"] // cfg["num_key_value_heads"] > 1  # GQA
    assert cfg["hidden_size"] % 64 and cfg["intermediate_size"] % 64  # not powers of two
    assert cfg["vocab_size"] % 2 == 1
    assert cfg["num_local_experts"] > cfg["num_experts_per_tok"] == 2
    assert cfg["tie_word_embeddings"] is False
    with safe_open(str(tiny_mixtral / "model-00001-of-00004.safetensors"), "pt") as handle:
        embed = handle.get_tensor("model.embed_tokens.weight")
    assert embed.shape == (cfg["vocab_size"], cfg["hidden_size"])


def test_dense_mistral_is_one_file_without_index(dense_mistral: Path) -> None:
    cfg = read_config(dense_mistral)
    assert cfg["model_type"] == "mistral" and "num_local_experts" not in cfg
    assert not (dense_mistral / INDEX_NAME).exists()
    with safe_open(str(dense_mistral / SINGLE_NAME), framework="pt") as handle:
        assert set(handle.keys()) == expected_names(cfg)
        gate = handle.get_tensor("model.layers.1.mlp.gate_proj.weight")
    assert gate.shape == (cfg["intermediate_size"], cfg["hidden_size"])


@pytest.mark.parametrize("fixture", ["tiny_mixtral", "dense_mistral"])
def test_engine_checkpoint_reads_every_tensor(request: pytest.FixtureRequest, fixture: str) -> None:
    folder: Path = request.getfixturevalue(fixture)
    names = Checkpoint(folder).names()
    assert set(names) == expected_names(read_config(folder))


@pytest.mark.parametrize(("fixture", "reference_cls"), CASES)
def test_transformers_loads_every_weight(
    request: pytest.FixtureRequest, fixture: str, reference_cls: type
) -> None:
    folder: Path = request.getfixturevalue(fixture)
    model, info = reference_cls.from_pretrained(
        folder, dtype=torch.float32, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    cfg = read_config(folder)
    # weights really came from the file, not from a fresh init
    with safe_open(str(folder / _shard_of(folder, "model.norm.weight")), "pt") as handle:
        norm = handle.get_tensor("model.norm.weight").float()
    assert torch.equal(model.model.norm.weight.detach(), norm)
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    ids = torch.randint(0, cfg["vocab_size"], (1, 9), generator=gen)
    with torch.inference_mode():
        logits = model(ids).logits
    assert logits.shape == (1, 9, cfg["vocab_size"]) and torch.isfinite(logits).all()
    assert logits.std() > 0.1  # not a degenerate, near-constant model


def _shard_of(folder: Path, name: str) -> str:
    index = folder / INDEX_NAME
    if index.exists():
        return json.loads(index.read_text())["weight_map"][name]
    return SINGLE_NAME


@pytest.mark.parametrize("fixture", ["tiny_mixtral", "dense_mistral"])
def test_tiny_tokenizer_round_trips_and_templates(
    request: pytest.FixtureRequest, fixture: str
) -> None:
    folder: Path = request.getfixturevalue(fixture)
    tok = AutoTokenizer.from_pretrained(folder)
    assert len(tok) == read_config(folder)["vocab_size"]
    text = "Zürich → 東京, naïve café 🙂 {never: 'seen'} \t\n end"
    ids = tok.encode(text)
    assert ids[0] == tok.bos_token_id  # plain encode starts with <s>, as Mistral's does
    assert tok.decode(ids, skip_special_tokens=True) == text
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Spain?"},
    ]
    rendered = tok.apply_chat_template(messages, tokenize=False)
    assert rendered == (
        "<s>Be brief.\n\n[INST] What is the capital of France? [/INST] Paris.</s>"
        "[INST] And of Spain? [/INST]"
    )
    chat_ids = tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert chat_ids.count(tok.bos_token_id) == 1 and chat_ids.count(tok.eos_token_id) == 1
    with pytest.raises(TemplateError, match="roles are system, user and assistant"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_builders_are_deterministic(tmp_path: Path) -> None:
    """The cache keys on the builder version alone, so a build must not vary."""
    for builder in (build_tiny_random_mixtral, build_dense_mistral):
        first = builder(tmp_path / f"{builder.__name__}-a")
        second = builder(tmp_path / f"{builder.__name__}-b")
        files = sorted(p.name for p in first.iterdir())
        assert files == sorted(p.name for p in second.iterdir())
        for name in files:
            assert (first / name).read_bytes() == (second / name).read_bytes(), name
    other_seed = build_tiny_random_mixtral(tmp_path / "seed1", seed=1)
    assert (other_seed / "model-00001-of-00004.safetensors").read_bytes() != (
        tmp_path / "build_tiny_random_mixtral-a" / "model-00001-of-00004.safetensors"
    ).read_bytes()


def test_cached_fixtures_match_their_builders(
    tiny_mixtral: Path, dense_mistral: Path, tmp_path: Path
) -> None:
    """A builder changed without a version bump would leave every run on a stale cache."""
    for cached, builder in (
        (tiny_mixtral, build_tiny_random_mixtral),
        (dense_mistral, build_dense_mistral),
    ):
        fresh = builder(tmp_path / cached.name)
        files = sorted(p.name for p in fresh.iterdir())
        assert files == sorted(p.name for p in cached.iterdir() if p.name != ".complete")
        for name in files:
            same = (fresh / name).read_bytes() == (cached / name).read_bytes()
            assert same, f"{cached.name}/{name} differs: bump its version in fixtures/builders.py"


def test_tiny_tokenizer_vocab_is_exact() -> None:
    tok = build_tiny_tokenizer()
    assert len(tok) == 331
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<unk>", "<s>", "</s>"]
