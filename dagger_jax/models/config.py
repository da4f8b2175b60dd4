"""The architecture of a dense Qwen3 model, and its translation to and from HF config.json."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

QWEN3_ARCHITECTURE = "Qwen3ForCausalLM"


@dataclasses.dataclass(frozen=True)
class YarnScaling:
    """YaRN RoPE scaling, as Qwen documents it for contexts past the pretrained window
    (config.json: "rope_scaling": {"rope_type": "yarn", "factor": 2.0,
    "original_max_position_embeddings": 32768} for 64K). Field names and defaults are those of
    transformers' `_compute_yarn_parameters`; the model computes the same frequencies."""
    factor: float
    original_max_position_embeddings: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None   # None: 0.1 ln(factor) + 1
    truncate: bool = True

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str) -> "YarnScaling":
        values = dict(values)
        rope_type = values.pop("rope_type", values.pop("type", "yarn"))
        values.pop("rope_theta", None)  # transformers 5 keeps the theta beside the scaling
        if rope_type != "yarn":
            raise ValueError(f"{where}: rope type {rope_type!r} is not supported (only 'default' "
                             "and 'yarn')")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        missing = [k for k in ("factor", "original_max_position_embeddings") if values.get(k) is None]
        if unknown or missing:
            raise ValueError(f"{where}: yarn rope scaling needs factor and "
                             f"original_max_position_embeddings (optional: beta_fast, beta_slow, "
                             f"attention_factor, truncate); got unknown {unknown}, missing {missing}")
        scaling = cls(**values)
        if not isinstance(scaling.factor, (int, float)) or scaling.factor < 1:
            raise ValueError(f"{where}: yarn factor must be a number >= 1, got {scaling.factor!r} "
                             "(context / original_max_position_embeddings)")
        if not isinstance(scaling.original_max_position_embeddings, int) or \
                scaling.original_max_position_embeddings <= 0:
            raise ValueError(f"{where}: original_max_position_embeddings must be a positive int, "
                             f"got {scaling.original_max_position_embeddings!r}")
        if scaling.beta_fast < scaling.beta_slow:
            raise ValueError(f"{where}: yarn beta_fast={scaling.beta_fast} must be >= "
                             f"beta_slow={scaling.beta_slow}")
        return scaling

    def to_hf(self, rope_theta: float) -> dict[str, Any]:
        out = {"rope_type": "yarn", "rope_theta": rope_theta, **dataclasses.asdict(self)}
        return {k: v for k, v in out.items() if v is not None}


@dataclasses.dataclass(frozen=True)
class Qwen3Config:
    """Shapes and constants of a dense Qwen3 decoder (what `transformers` calls Qwen3Config)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    max_position_embeddings: int = 40_960
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    rope_scaling: YarnScaling | None = None  # a mapping is read as YarnScaling.from_mapping

    def __post_init__(self) -> None:
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, YarnScaling):
            object.__setattr__(self, "rope_scaling", YarnScaling.from_mapping(
                self.rope_scaling, "Qwen3Config.rope_scaling"))
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"Qwen3Config.{name} must be a positive int, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"Qwen3Config: num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ValueError(f"Qwen3Config.head_dim={self.head_dim} must be even for RoPE")

    @property
    def num_params(self) -> int:
        """Parameter count (embeddings included once when tied)."""
        h, i, d = self.hidden_size, self.intermediate_size, self.head_dim
        q, kv = self.num_attention_heads * d, self.num_key_value_heads * d
        attn = h * q + 2 * h * kv + q * h + 2 * d
        if self.attention_bias:
            attn += q + 2 * kv + h
        layer = attn + 3 * h * i + 2 * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return self.vocab_size * h + self.num_hidden_layers * layer + h + head

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "config") -> "Qwen3Config":
        """Builds a config from our own field names, naming unknown or missing keys."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"{where}: unknown Qwen3 config keys {unknown}; known: {sorted(fields)}")
        try:
            return cls(**dict(values))
        except TypeError as e:
            raise ValueError(f"{where}: {e}") from None

    # --- Hugging Face config.json ---------------------------------------------------------

    def to_hf_dict(self, torch_dtype: str = "float32") -> dict[str, Any]:
        """The config.json that `transformers` needs to load our export as Qwen3ForCausalLM."""
        return {
            "architectures": [QWEN3_ARCHITECTURE],
            "model_type": "qwen3",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            # Both spellings: transformers 5 reads rope_parameters, 4.x reads rope_theta.
            "rope_theta": self.rope_theta,
            "rope_parameters": (self.rope_scaling.to_hf(self.rope_theta) if self.rope_scaling
                                else {"rope_type": "default", "rope_theta": self.rope_theta}),
            "rope_scaling": self.rope_scaling.to_hf(self.rope_theta) if self.rope_scaling else None,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "attention_dropout": 0.0,
            "use_sliding_window": False,
            "sliding_window": None,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "torch_dtype": torch_dtype,
            "dtype": torch_dtype,
        }

    @classmethod
    def from_hf_dict(cls, hf: Mapping[str, Any], where: str = "config.json") -> "Qwen3Config":
        """Reads a HF Qwen3 config, refusing architectures and features this model does not have."""
        archs = hf.get("architectures") or []
        model_type = hf.get("model_type")
        if model_type != "qwen3" or (archs and QWEN3_ARCHITECTURE not in archs):
            raise ValueError(
                f"{where}: expected a dense Qwen3 model (model_type 'qwen3', architectures "
                f"[{QWEN3_ARCHITECTURE!r}]), got model_type={model_type!r} architectures={archs}")
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"{where}: hidden_act={act!r} is not supported (Qwen3 uses 'silu')")
        if hf.get("use_sliding_window"):
            raise ValueError(f"{where}: use_sliding_window=true is not supported")
        rope = hf.get("rope_parameters") or {}
        # transformers 4 writes rope_scaling, 5 writes rope_parameters: plain RoPE or YaRN.
        scaling = None
        for key in ("rope_parameters", "rope_scaling"):
            given = hf.get(key) or {}
            rope_type = given.get("rope_type", given.get("type"))
            if rope_type == "yarn":
                scaling = YarnScaling.from_mapping(given, f"{where}: {key}")
            elif rope_type not in (None, "default"):
                raise ValueError(f"{where}: rope type {rope_type!r} is not supported (only "
                                 "'default' and 'yarn')")
        rope_theta = rope.get("rope_theta", hf.get("rope_theta", 1_000_000.0))
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads")
        missing = [k for k in required if k not in hf]
        if missing:
            raise ValueError(f"{where}: missing keys {missing}")
        heads = hf["num_attention_heads"]
        eos = hf.get("eos_token_id")
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            rope_theta=float(rope_theta),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=bool(hf.get("attention_bias", False)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 40_960)),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=eos,
            rope_scaling=scaling,
        )

    @classmethod
    def from_hf_dir(cls, hf_dir: str | Path) -> "Qwen3Config":
        path = Path(hf_dir) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{hf_dir}: no config.json (is this a Hugging Face model directory?)")
        try:
            hf = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_hf_dict(hf, where=str(path))
