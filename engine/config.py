"""ModelArgs: the architecture, read from a Hugging Face config.json.

Mixtral, Mistral and Llama share one decoder. A dense model (Mistral, Llama)
is a Mixtral with one expert and top-1 routing of weight 1.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mixdesk.engine.errors import ModelFormatError, UnsupportedModelError

SUPPORTED_MODEL_TYPES = ("mixtral", "mistral", "llama")


@dataclass(frozen=True)
class ModelArgs:
    model_type: str
    vocab_size: int
    dim: int  # hidden_size
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int  # intermediate_size, per expert
    n_experts: int = 1  # 1 = dense MLP
    top_k: int = 1
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    max_seq_len: int = 4096  # max_position_embeddings
    tie_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any], source: str = "config.json") -> ModelArgs:
        """Build from a parsed config.json.

        Args:
            cfg: the parsed JSON.
            source: the file name, for error messages.
        """
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"{source}: model_type {model_type!r} is not supported; "
                f"mixdesk runs {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        for flag in ("attention_bias", "mlp_bias"):
            if cfg.get(flag):
                raise UnsupportedModelError(f"{source}: {flag}=true is not supported")
        rope = cfg.get("rope_scaling") or {}
        rope_params = cfg.get("rope_parameters") or {}  # transformers 5 nests theta here
        rope_type = rope.get("rope_type", rope.get("type")) or rope_params.get("rope_type")
        if rope_type not in (None, "default"):
            raise UnsupportedModelError(f"{source}: rope scaling {rope_type!r} is not supported")
        try:
            dim = int(cfg["hidden_size"])
            n_heads = int(cfg["num_attention_heads"])
            eos = cfg.get("eos_token_id")
            eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
            n_experts = int(cfg.get("num_local_experts", 1)) if model_type == "mixtral" else 1
            return cls(
                model_type=model_type,
                vocab_size=int(cfg["vocab_size"]),
                dim=dim,
                n_layers=int(cfg["num_hidden_layers"]),
                n_heads=n_heads,
                n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
                head_dim=int(cfg.get("head_dim") or dim // n_heads),
                ffn_dim=int(cfg["intermediate_size"]),
                n_experts=n_experts,
                top_k=int(cfg.get("num_experts_per_tok", 2)) if n_experts > 1 else 1,
                rope_theta=float(cfg.get("rope_theta", rope_params.get("rope_theta", 10000.0))),
                norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
                max_seq_len=int(cfg.get("max_position_embeddings", 4096)),
                tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                bos_token_id=cfg.get("bos_token_id"),
                eos_token_ids=tuple(int(i) for i in eos_ids),
            )
        except KeyError as missing:
            raise ModelFormatError(f"{source}: required field {missing} is missing") from None
        except (TypeError, ValueError) as bad:
            raise ModelFormatError(f"{source}: a field has the wrong type ({bad})") from None

    @classmethod
    def from_folder(cls, folder: Path) -> ModelArgs:
        """Read `folder/config.json`."""
        path = Path(folder) / "config.json"
        if not Path(folder).is_dir():
            raise ModelFormatError(f"{folder}: no such model folder")
        if not path.is_file():
            raise ModelFormatError(f"{folder}: no config.json, so this is not a model folder")
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as bad:
            raise ModelFormatError(f"{path}: not readable JSON ({bad})") from None
        if not isinstance(cfg, dict):
            raise ModelFormatError(f"{path}: expected a JSON object")
        return cls.from_hf_config(cfg, source=str(path))
