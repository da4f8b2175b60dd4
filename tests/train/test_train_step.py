"""The train step: chunked loss, accumulation, and sharding give the same numbers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from dagger_jax.models.config import Qwen3Config
from dagger_jax.models.qwen3 import Qwen3ForCausalLM, init_params, output_embedding
from dagger_jax.models.sharding import QWEN3_RULES, make_mesh, row_block
from dagger_jax.train.loss import chunked_token_loss
from dagger_jax.train.optimizer import (current_learning_rate, holds_learning_rate, learning_rate_schedule,
                                       make_optimizer, round_learning_rate, with_learning_rate)
from dagger_jax.train.trainer import global_batch
from dagger_jax.train.train_step import (TrainState, jit_init_state, jit_train_step, make_train_step,
                                         state_shardings)

CONFIG = Qwen3Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=10_000.0)


def train_config(**overrides) -> ml_collections.ConfigDict:
    values = dict(steps=10, lr=1e-2, warmup_steps=2, schedule="cosine", end_lr_ratio=0.1,
                  b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.01, clip_grad_norm=1.0)
    return ml_collections.ConfigDict({**values, **overrides})


def random_batch(rows: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, CONFIG.vocab_size, size=(rows, seq)).astype(np.int32)
    # Two packed segments per row, then padding; targets only inside segments.
    split, end = seq // 2, seq - 3
    segments = np.zeros((rows, seq), np.int32)
    segments[:, :split], segments[:, split:end] = 1, 2
    positions = np.where(segments == 1, np.arange(seq), np.arange(seq) - split) * (segments > 0)
    targets = np.roll(ids, -1, axis=1)
    mask = (segments > 0) & (np.roll(segments, -1, axis=1) == segments)
    mask &= rng.random((rows, seq)) < 0.7  # uneven label counts across rows
    return dict(input_ids=ids, target_ids=targets.astype(np.int32),
                loss_mask=mask.astype(np.float32), segment_ids=segments,
                positions=positions.astype(np.int32))


def test_chunked_loss_equals_full_logits_loss():
    params = init_params(CONFIG, jax.random.key(0))
    batch = random_batch(2, 24)
    model = Qwen3ForCausalLM(CONFIG)
    hidden = model.apply({"params": params}, batch["input_ids"], batch["positions"],
                         batch["segment_ids"], return_hidden=True)
    w = output_embedding(params, CONFIG)

    def full(hidden, w):
        logits = hidden @ w
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["target_ids"][..., None], -1)[..., 0]
        return jnp.sum(nll * batch["loss_mask"])

    def chunked(hidden, w, chunk, shards):
        return chunked_token_loss(hidden, w, batch["target_ids"], batch["loss_mask"], chunk,
                                  seq_shards=shards)["loss"]

    ref, ref_grads = jax.value_and_grad(full, argnums=(0, 1))(hidden, w)
    # 5 does not divide 24 (nor a sequence shard's 12): the padded tails must not count.
    for chunk, shards in ((5, 1), (8, 1), (24, 1), (5, 2), (12, 2)):
        value, grads = jax.value_and_grad(chunked, argnums=(0, 1))(hidden, w, chunk, shards)
        np.testing.assert_allclose(value, ref, rtol=1e-5)
        for g, r in zip(grads, ref_grads):
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)
    count = chunked_token_loss(hidden, w, batch["target_ids"], batch["loss_mask"], 7)["count"]
    assert count == batch["loss_mask"].sum()


def _run_steps(mesh, batch, grad_accum=1, steps=2, loss_tokens=0):
    optimizer, schedule = make_optimizer(train_config())
    model = Qwen3ForCausalLM(CONFIG)
    abstract = jax.eval_shape(lambda p: TrainState(jnp.zeros((), jnp.int32), p, optimizer.init(p)),
                              jax.eval_shape(lambda: init_params(CONFIG, jax.random.key(0))))
    shardings = state_shardings(mesh, QWEN3_RULES, abstract)
    params = jax.device_put(init_params(CONFIG, jax.random.key(0)), shardings.params)
    state = jit_init_state(optimizer, shardings)(params)
    step = jit_train_step(make_train_step(model, optimizer, schedule, grad_accum, loss_chunk=8,
                                          loss_tokens=loss_tokens,
                                          seq_shards=mesh.shape["sequence"]), mesh, shardings)
    metrics = []
    for _ in range(steps):
        state, m = step(state, batch)
        metrics.append(jax.device_get(m))
    return state, metrics


@pytest.mark.slow
def test_a_step_split_over_rows_tokens_and_heads_matches_one_device():
    assert jax.device_count() == 8, "tests/conftest.py forces 8 CPU devices"
    batch = random_batch(8, 16)
    single_state, single = _run_steps(make_mesh((1, 1, 1, 1), jax.devices()[:1]), batch)
    mesh = make_mesh((1, 2, 2, 2))  # rows over fsdp, each row's tokens over sequence, heads
    sharded_state, sharded = _run_steps(mesh, batch)
    for a, b in zip(single, sharded):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
        np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-4)
    # Adam divides by sqrt(v): near-zero gradients make a 1e-7 difference in a gradient a
    # visible one in the update, so the tolerance is 1% of one step's size (lr = 1e-2).
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4),
                           jax.device_get(single_state.params), jax.device_get(sharded_state.params))
    # Parameters and optimizer moments land where the rules say.
    # The sequence shards hold parts of the weights as FSDP shards do (models/sharding.py).
    fsdp = ("fsdp", "sequence")
    q = sharded_state.params["layers"]["self_attn"]["q_proj"]["kernel"]
    assert q.sharding.spec == P(None, fsdp, "tensor")
    assert q.addressable_shards[0].data.shape == (2, 8, 32)
    assert sharded_state.params["embed_tokens"].sharding.spec == P("tensor", fsdp)
    down = sharded_state.params["layers"]["mlp"]["down_proj"]["kernel"]
    assert down.sharding.spec == P(None, "tensor", fsdp)
    mu = sharded_state.opt_state[1][0].mu["layers"]["mlp"]["down_proj"]["kernel"]
    assert mu.sharding.spec == P(None, "tensor", fsdp)
    assert sharded_state.params["norm"]["scale"].sharding.spec == P()


@pytest.mark.slow
def test_grad_accumulation_equals_one_big_batch():
    mesh = make_mesh((1, 2, 1, 1), jax.devices()[:2])
    batch = random_batch(8, 16, seed=3)
    _, big = _run_steps(mesh, batch, grad_accum=1)
    _, accumulated = _run_steps(mesh, batch, grad_accum=4)
    for a, b in zip(big, accumulated):
        for key in ("loss", "grad_norm", "target_tokens", "param_norm"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5)


@pytest.mark.slow
def test_a_fixed_loss_normaliser_scales_the_gradient_by_the_batchs_targets():
    mesh = make_mesh((1, 1, 1, 1), jax.devices()[:1])
    batch = random_batch(4, 16, seed=4)
    count = float(batch["loss_mask"].sum())
    _, (mean, _) = _run_steps(mesh, batch)
    _, (fixed, _) = _run_steps(mesh, batch, loss_tokens=4 * count)
    # The same per-token loss is logged; the gradient is the sum over 4x the batch's targets.
    np.testing.assert_allclose(fixed["loss"], mean["loss"], rtol=1e-6)
    assert fixed["target_tokens"] == mean["target_tokens"] == count
    np.testing.assert_allclose(fixed["grad_norm"], mean["grad_norm"] / 4, rtol=1e-5)
    with pytest.raises(ValueError, match="train.loss_tokens must be >= 0"):
        make_train_step(Qwen3ForCausalLM(CONFIG), *make_optimizer(train_config()), 1, 8,
                        loss_tokens=-1)


def test_loss_falls_when_training_on_one_batch():
    batch = random_batch(4, 16, seed=5)
    _, metrics = _run_steps(make_mesh((1, 1, 1, 1), jax.devices()[:1]), batch, steps=8)
    assert metrics[-1]["loss"] < metrics[0]["loss"] - 0.5


def test_schedule_warms_up_then_decays():
    s = learning_rate_schedule(1.0, total_steps=10, warmup_steps=2, schedule="cosine", end_lr_ratio=0.1)
    assert float(s(0)) == 0.0 and float(s(1)) == pytest.approx(0.5)
    assert float(s(2)) == pytest.approx(1.0)
    assert float(s(10)) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="train.schedule='exp'"):
        learning_rate_schedule(1.0, 10, 2, "exp")


def test_weight_decay_skips_norms():
    optimizer, _ = make_optimizer(train_config(weight_decay=0.5, lr=0.1, warmup_steps=0, clip_grad_norm=0.0))
    params = {"kernel": jnp.ones((2, 2)), "scale": jnp.ones((2,))}
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = optimizer.update(zero, optimizer.init(params), params)
    assert float(jnp.abs(updates["kernel"]).max()) > 0
    assert float(jnp.abs(updates["scale"]).max()) == 0


def test_a_held_rate_steps_exactly_as_a_schedule_at_that_rate():
    params = {"kernel": jnp.arange(4.0).reshape(2, 2), "scale": jnp.ones((2,))}
    grads = {"kernel": jnp.full((2, 2), 0.3), "scale": jnp.full((2,), -0.2)}
    held, _ = make_optimizer(train_config(round_schedule="cosine"))
    plain, _ = make_optimizer(train_config(lr=0.004, schedule="constant", warmup_steps=0))
    state = with_learning_rate(held.init(params), jnp.float32(0.004))
    assert holds_learning_rate(state) and not holds_learning_rate(plain.init(params))
    assert float(current_learning_rate(state, None, 0)) == pytest.approx(0.004)
    got, _ = held.update(grads, state, params)
    want, _ = plain.update(grads, plain.init(params), params)
    for key in params:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6)
    still, _ = held.update(grads, with_learning_rate(state, jnp.float32(0.0)), params)
    assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree_util.tree_leaves(still))
    with pytest.raises(ValueError, match="holds no learning rate"):
        with_learning_rate(plain.init(params), jnp.float32(0.1))
    with pytest.raises(ValueError, match="train.round_schedule='exp'"):
        make_optimizer(train_config(round_schedule="exp"))


def test_each_round_warms_up_and_ends_at_the_low_rate():
    config = train_config(round_schedule="cosine", lr=1e-3, warmup_steps=2, end_lr_ratio=0.1)
    first, second = round_learning_rate(config, 0, 40), round_learning_rate(config, 40, 60)
    assert float(first(0)) == 0.0 and float(first(2)) == pytest.approx(1e-3)
    for rate, start, end in ((first, 0, 40), (second, 40, 60)):
        values = [float(rate(step)) for step in range(start, end)]
        assert values[0] == 0.0 and max(values) == pytest.approx(1e-3)
        assert values[2:] == sorted(values[2:], reverse=True)  # decays after warmup
        assert values[-1] == pytest.approx(1e-4)  # the round's last step: lr * end_lr_ratio


def test_a_batch_is_placed_by_rows_and_tokens_and_a_local_block_fills_its_shards():
    mesh = make_mesh((1, 2, 2, 2))
    batch = random_batch(8, 16, seed=5)
    placed = global_batch(mesh, batch)
    local = global_batch(mesh, batch, local=True)  # one process: its block is every row
    for key, rows in batch.items():
        assert placed[key].sharding.spec == P(("data", "fsdp"), "sequence")
        assert placed[key].addressable_shards[0].data.shape == (4, 8)
        np.testing.assert_array_equal(placed[key], rows)
        np.testing.assert_array_equal(local[key], rows)
    block = row_block(mesh)
    assert (block.index, block.count, block.shards, block.of) == (0, 1, (0, 1), 2)


def test_row_blocks_on_pod_slices_cover_every_row_once():
    """mesh_utils lays devices out for the interconnect: a host's batch shards need not be
    consecutive, and a row whose sequence group spans hosts is fed by each of them."""
    from dagger_jax.train.tpu_compile import tpu_slice
    for topology, shape, hosts_per_block in (("v5p:2x2x4", (1, 16, 1, 1), 1),
                                             ("v5p:4x4x4", (1, 16, 4, 1), 2),
                                             ("v5e:8x16", (1, 16, 8, 1), 4)):
        where = tpu_slice(topology)
        mesh = make_mesh(shape, where.devices)
        blocks = [row_block(mesh, process) for process in range(where.hosts)]
        distinct = {b.shards for b in blocks}
        assert sorted(s for shards in distinct for s in shards) == list(range(16)), topology
        assert all(b.count == len(distinct) == where.hosts // hosts_per_block for b in blocks)
        assert sorted(b.index for b in blocks) == sorted(list(range(len(distinct))) * hosts_per_block)
