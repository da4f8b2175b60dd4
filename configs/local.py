"""Tiny Qwen3-architecture student trained from scratch on one CPU machine (the local demo)."""

from dagger_jax.config_base import base_config, lock


def get_config(arg: str | None = None):
    """No argument: train on the built-in sample conversations. `configs/local.py:<recipe>`
    (sft, dagger, aggrevate, ...): the outer loop with that recipe on synthetic tasks."""
    c = base_config()
    c.model.update(dict(
        vocab_size=1024,  # = tokenizer.vocab_size of the embedded default BPE
        hidden_size=128, intermediate_size=384, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        rope_theta=10_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
        attention_bias=False, max_position_embeddings=4096,
    ))
    c.mesh.shape = (1, -1, 1)
    c.attention_block = 64  # 2x faster than dense scores at seq 512 on CPU (benchmarks/)
    c.train.update(dict(steps=60, batch_size=8, seq_len=512, lr=3e-3, warmup_steps=10,
                        log_every=10, checkpoint_every=20))
    if arg:
        c.loop.enabled = True
        c.loop.recipe = arg
        c.train.update(dict(seq_len=4096, batch_size=4, lr=1e-3, schedule="constant",
                            warmup_steps=10, checkpoint_every=50))
        c.model.max_position_embeddings = 8192
    return lock(c)
