"""The processes of one multi-host run agreeing with each other: on the config they were started
with, and at the points of the loop where all wait for the leader (process 0).

Both go through JAX's distributed coordination service (what `jax.distributed.initialize()`
connects), not through a device collective: a barrier there has a timeout, so a process whose
leader died says so instead of hanging in a collective forever. Orbax waits on its checkpoint
barriers the same way. One process: both are no-ops.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import jax


class PeerLost(RuntimeError):
    """A barrier timed out: a peer (usually the leader) died or is stuck; the message says
    which barrier and what to do."""


def _client():
    from jax._src import distributed  # the coordination client jax.distributed set up
    client = distributed.global_state.client
    if client is None:
        raise RuntimeError(f"{jax.process_count()} JAX processes but no distributed client: "
                           "call jax.distributed.initialize() first (config.distributed.enabled)")
    return client


def barrier(name: str, timeout_s: float) -> None:
    """Returns once every process reached `name` (unique within a run's life); raises PeerLost
    after `timeout_s`."""
    if jax.process_count() == 1:
        return
    try:
        _client().wait_at_barrier(name, int(timeout_s * 1000))
    except Exception as e:  # the client raises JaxRuntimeError (DEADLINE_EXCEEDED, ...)
        raise PeerLost(
            f"process {jax.process_index()}: not every process reached {name!r} within "
            f"{timeout_s:g} s (config.distributed.barrier_timeout_s); process 0 collects and "
            "evaluates for all: if it died, restart every process with the same command (the "
            f"run resumes from its workdir). ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''})") from None


def config_digest(config: Any, workdir: str) -> str:
    """A hash of the run as every process was told it: the workdir and the config (its JSON,
    keys sorted) but for `distributed`, which names each process differently."""
    fields = {k: v for k, v in json.loads(config.to_json_best_effort()).items()
              if k != "distributed"}
    text = json.dumps({"workdir": workdir, "config": fields}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def agree_on_config(config: Any, workdir: str, timeout_s: float = 300.0) -> None:
    """Refuses to start unless every process was given the same config: each publishes its
    digest and compares all of them (a process started with other flags would compute other
    batches, or a different model, and fail far later)."""
    if jax.process_count() == 1:
        return
    client, me = _client(), jax.process_index()
    mine = config_digest(config, workdir)
    client.key_value_set(f"dagger_jax/config/{me}", mine)
    # Every process reads every digest, so that all of them stop, not only the odd one out
    # (the others would wait for it in their first collective).
    digests = [client.blocking_key_value_get(f"dagger_jax/config/{k}", int(timeout_s * 1000))
               for k in range(jax.process_count())]
    odd = [k for k, digest in enumerate(digests) if digest != digests[0]]
    if odd:
        raise ValueError(f"process(es) {odd} were started with another config than process 0 "
                         f"(config digests {[d[:12] for d in digests]}): start every process "
                         "with the same --config, overrides and --workdir")
