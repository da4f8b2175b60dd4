"""Matmul FLOPs of a traced program, loops and recomputation included.

XLA's own count (`Compiled.cost_analysis()`) visits each while-loop body once, so for a model
whose layers are one scanned body it reports about one layer's work, and it cannot see into a
Pallas kernel. This counts from the program as traced instead (the jaxpr of the train step):
every dot_general, times the trip count of each scan around it, the grid of each Pallas
kernel around it and the devices of each shard_map around it, through calls, remat (whose recomputation the backward pass traces again) and
custom derivatives. A `cond` counts its costliest branch, so a kernel that skips blocks at run
time (the causal upper triangle) is counted as if it computed them: an upper bound there.
"""

from __future__ import annotations

import math
from typing import Any

from jax.extend import core


def _sub_jaxprs(value: Any) -> list[core.Jaxpr]:
    if isinstance(value, core.ClosedJaxpr):
        return [value.jaxpr]
    if isinstance(value, core.Jaxpr):
        return [value]
    if isinstance(value, (tuple, list)):
        return [j for v in value for j in _sub_jaxprs(v)]
    return []


def _repeats(eqn: core.JaxprEqn) -> int:
    name = eqn.primitive.name
    if name == "scan":
        return int(eqn.params["length"])
    if name == "pallas_call":
        return math.prod(int(g) for g in eqn.params["grid_mapping"].grid)
    if name == "shard_map":  # its body is one device's share; every device of the mesh runs it
        return math.prod(eqn.params["mesh"].shape.values())
    return 1


def matmul_flops(jaxpr: core.Jaxpr | core.ClosedJaxpr) -> float:
    """2 * M * N * K summed over every matmul the program runs."""
    if isinstance(jaxpr, core.ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contracting, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            out = eqn.outvars[0].aval.shape
            total += 2.0 * math.prod(out) * math.prod(lhs[d] for d in contracting)
            continue
        inner = [matmul_flops(j) for v in eqn.params.values() for j in _sub_jaxprs(v)]
        if not inner:
            continue
        if eqn.primitive.name == "cond":
            total += max(inner)
        else:
            total += _repeats(eqn) * sum(inner)
    return total
