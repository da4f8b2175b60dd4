"""Qwen3-4B student (the shapes of Qwen3-4B-Instruct-2507) on a TPU pod.

Start from the real weights with `tools/import_hf.py --hf-dir <Qwen3-4B-Instruct-2507> --workdir W`
and pass `--config.tokenizer.dir=<the same dir>`.
"""

from dagger_jax.config_base import lock, paper_loop, paper_pod_config


def get_config(arg: str | None = None):
    """No argument: the plain training job; `:<recipe>` (sft, dagger, ...): the paper's loop."""
    config = paper_loop(paper_pod_config(dict(
        vocab_size=151_936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128,  # q: 2560 -> 4096
        rope_theta=5_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
        attention_bias=False, max_position_embeddings=262_144, eos_token_id=151_645,
    )), arg)
    # Sized for v5p:2x2x2 (8 chips, 2 rows of the 16 each): two micro-batches of 8 rows keep
    # the step at 52 of 95 GiB per chip (one batch of 16: 88 GiB, too close). On 16 chips or
    # more set --config.train.grad_accum=1 (tools/compile_tpu.py says so).
    config.train.grad_accum = 2
    return lock(config)
