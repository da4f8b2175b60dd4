"""Tiny random Qwen3 models made by `transformers` itself: the outside reference for parity."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

TINY = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=24, rms_norm_eps=1e-6,
            max_position_embeddings=256)


def make_hf_qwen3(out_dir: Path, seed: int = 0, max_shard_size: str | None = None,
                  **overrides) -> transformers.PreTrainedModel:
    """Saves a random Qwen3ForCausalLM (fp32) to out_dir and returns it in eval mode."""
    torch.manual_seed(seed)
    config = transformers.Qwen3Config(**{**TINY, **overrides})
    model = transformers.Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        # Norm weights start at 1.0; perturb them so a mis-mapped norm cannot pass parity.
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out_dir, **kwargs)
    return model


def hf_logits(model: transformers.PreTrainedModel, input_ids) -> "torch.Tensor":
    with torch.no_grad():
        return model(torch.as_tensor(input_ids, dtype=torch.long)).logits.float().numpy()
