"""Matmul FLOPs counted from the traced program: loops by their trip count, remat's
recomputation, both branches' costlier one."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jax.sharding import PartitionSpec as P

from dagger_jax.models.sharding import make_mesh
from dagger_jax.train.flop_count import matmul_flops

M, K, N = 8, 16, 32
ONE = 2 * M * K * N


def flops(fn, *shapes):
    return matmul_flops(jax.make_jaxpr(fn)(*(jnp.zeros(s) for s in shapes)))


def test_a_matmul_and_a_scan_of_them():
    assert flops(lambda a, b: a @ b, (M, K), (K, N)) == ONE
    assert flops(lambda a, b: jax.lax.scan(lambda c, x: (c, c @ x), a, b)[1],
                 (M, K), (5, K, N)) == 5 * ONE


def test_a_gradient_and_remat_count_what_runs():
    loss = lambda a, b: jnp.sum(jnp.tanh(a @ b) @ b.T)  # noqa: E731
    forward = flops(loss, (M, K), (K, N))
    plain = flops(jax.grad(loss, argnums=(0, 1)), (M, K), (K, N))
    rematted = flops(jax.grad(jax.checkpoint(loss), argnums=(0, 1)), (M, K), (K, N))
    assert plain == 3 * forward  # forward, and two matmuls per matmul backward
    # Inside the backward the forward runs again as far as the backward needs it: tanh(a @ b),
    # not the last matmul, whose output nothing reads.
    assert rematted == plain + ONE


def test_a_shard_map_counts_every_devices_share():
    mesh = make_mesh((1, 4, 1, 1), jax.devices()[:4])
    fn = jax.shard_map(lambda a, b: a @ b, mesh=mesh, in_specs=(P("fsdp"), P()),
                       out_specs=P("fsdp"))
    assert flops(fn, (M, K), (K, N)) == ONE


def test_cond_counts_its_costliest_branch():
    fn = lambda p, a, b: jax.lax.cond(p, lambda: a @ b @ b.T @ b, lambda: a @ b)  # noqa: E731
    got = matmul_flops(jax.make_jaxpr(fn)(True, jnp.zeros((M, K)), jnp.zeros((K, N))))
    assert got == ONE + 2 * M * N * K + ONE
