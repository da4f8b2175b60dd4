"""Tiny Qwen3-architecture student trained from scratch on one CPU machine (the local demo)."""

from dagger_jax.config_base import base_config, lock


def get_config(arg: str | None = None):
    """No argument: SFT on the trajectory shards --config.data.dirs names (the plain job).
    `configs/local.py:<recipe>` (sft, dagger, aggrevate, ...): the outer loop with that recipe
    on synthetic tasks."""
    c = base_config()
    c.model.update(dict(
        vocab_size=1024,  # = tokenizer.vocab_size of the embedded default BPE
        hidden_size=128, intermediate_size=384, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        rope_theta=10_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
        attention_bias=False, max_position_embeddings=4096,
    ))
    c.mesh.shape = (1, -1, 1, 1)
    c.attention_block = 64  # 2x faster than dense scores at seq 512 on CPU (benchmarks/)
    c.train.update(dict(steps=60, batch_size=8, seq_len=512, lr=3e-3, warmup_steps=10,
                        log_every=10, checkpoint_every=20))
    if arg:
        c.loop.enabled = True
        c.loop.recipe = arg
        # The demo (python -m dagger_jax.demo): tuned for 2 CPU cores; the knobs and what they
        # cost are in docs/demo.md. Short rows: attention on CPU costs ~T per token, and a
        # compact-prompt expert episode (1,150-1,400 tokens) fits one 1536-token row (at 2048
        # rows were 59% full; at 1280 a tenth of SFT's last turns would not fit).
        c.train.update(dict(seq_len=1536, batch_size=2, lr=1.5e-3, schedule="constant",
                            warmup_steps=5, checkpoint_every=50))
        c.model.max_position_embeddings = 4096
        # Causal query blocks of 128 (12 per row, unrolled): a step takes 0.67x the time of
        # blocks of 512 and 0.47x that of dense scores; compiling takes ~15 s
        # (benchmarks/attention_block.py).
        c.attention_block = 128
        # Every recipe trains on at most 120 teacher-labelled turns per iteration (30 expert
        # episodes; loop.cap_trained_labels). A fresh window of 40 training tasks per
        # iteration (the budget uses ~35 of them). Two epochs of each iteration's new data, one
        # of them over all the data so far (loop.earlier_epochs): SFT trains 135 steps instead of
        # 180, DAgger 160-206 instead of 204-214. A refused edit shows the file's closest lines
        # (loop.edit_miss_hint). With both, DAgger's resolve rate was above or equal to SFT's in
        # each of 3 seeds (docs/studies/01-two-function-family.md).
        c.loop.update(dict(iterations=3, label_budget=120, tasks_per_iteration=40, epochs=2,
                           earlier_epochs=1,
                           max_turns=8, max_new_tokens=128, context_budget=2048, concurrency=6,
                           prompt_style="compact", edit_miss_hint=True))
        # DAgger's student acts greedily in collection, as it is evaluated, so the states it is
        # labelled on are those the evaluated policy reaches. Measured against PAPER.md's
        # 0.7 / 0.9 (docs/studies/01-two-function-family.md): no difference in resolve rate
        # beyond the seed spread.
        c.loop.temperature = 0.0
        # A narrow task family a from-scratch student can learn on CPU: 2 functions per file
        # from the first 4 templates, operator bugs only, always in `ledger/core.py` (a student
        # this size does not learn to copy a path from the issue within the budget;
        # docs/demo.md).
        c.tasks.update(dict(templates=4, bug_kinds="compare,arith", packages=1,
                            numbered_packages=False, modules=1, num_train=160,
                            num_heldout=24))
        # 12 held-out tasks keep the demo near 15 minutes; the seed study evaluates all 24
        # (--config.eval.num_tasks=24; the first 12 are these). Not after iteration 1: 30
        # examples from scratch resolve nothing (every seed so far), yet its evaluation took
        # as long as a trained student's.
        c.eval.update(dict(num_tasks=12, max_turns=6, shift_states=16, from_iteration=2))
    return lock(c)
