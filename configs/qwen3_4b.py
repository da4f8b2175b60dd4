"""Qwen3-4B student (the shapes of Qwen3-4B-Instruct-2507) on a TPU pod.

Start from the real weights with `tools/import_hf.py --hf-dir <Qwen3-4B-Instruct-2507> --workdir W`
and pass `--config.tokenizer.dir=<the same dir>`.
"""

from dagger_jax.config_base import lock, paper_loop, paper_pod_config


def get_config(arg: str | None = None):
    """No argument: the plain training job; `:<recipe>` (sft, dagger, ...): the paper's loop."""
    return lock(paper_loop(paper_pod_config(dict(
        vocab_size=151_936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128,  # q: 2560 -> 4096
        rope_theta=5_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
        attention_bias=False, max_position_embeddings=262_144, eos_token_id=151_645,
    )), arg))
