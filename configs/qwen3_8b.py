"""Qwen3-8B student on a TPU pod.

Start from the real weights with `tools/import_hf.py --hf-dir <Qwen3-8B> --workdir W`
and pass `--config.tokenizer.dir=<the same dir>`.
"""

from dagger_jax.config_base import lock, paper_loop, paper_pod_config


def get_config(arg: str | None = None):
    """No argument: the plain training job; `:<recipe>` (sft, dagger, ...): the paper's loop."""
    return lock(paper_loop(paper_pod_config(dict(
        vocab_size=151_936, hidden_size=4096, intermediate_size=12_288, num_hidden_layers=36,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
        attention_bias=False, eos_token_id=151_645,
        # Qwen3-8B is pretrained to 32K (40,960 with generation); the paper's 64K context is
        # YaRN 2x, as Qwen documents it. A checkpoint imported without it is extended here.
        max_position_embeddings=65_536,
        rope_scaling=dict(rope_type="yarn", factor=2.0, original_max_position_embeddings=32_768),
    )), arg))
