"""Actors from JSON-able specs, so a collection job can travel over RPC.

    {"kind": "expert", "search": "function"}             the scripted expert (knows the fix)
    {"kind": "sglang", "endpoints": [url, ...], "sampling": {...SGLang sampling_params}}
    {"kind": "openai", "base_url": url, "model": name, "sampling": {...}}   (API teachers)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from dagger_jax.agent import ChatTokenizer
from dagger_jax.policies.actors import Actor, ExpertActor, TokenActor
from dagger_jax.policies.endpoint_pool import EndpointPool
from dagger_jax.policies.generation import SamplingParams
from dagger_jax.policies.local_sampler import LocalSampler
from dagger_jax.policies.scripted_expert import ScriptedExpert
from dagger_jax.storage.store import PathLike, local_dir

KINDS = ("expert", "sglang", "openai")


def build_actor(spec: Mapping[str, Any] | None, chat: ChatTokenizer, role: str) -> Actor | None:
    """The actor a spec names (None for no spec); ValueError names the role and the problem."""
    if spec is None:
        return None
    if not isinstance(spec, Mapping) or spec.get("kind") not in KINDS:
        raise ValueError(f"{role} actor spec {spec!r}: 'kind' must be one of {KINDS}")
    kind = spec["kind"]
    if kind == "expert":
        return ExpertActor(ScriptedExpert(search=spec.get("search", "function")))
    sampling = SamplingParams.from_sglang(dict(spec.get("sampling", {})), where=f"{role}.sampling")
    if kind == "sglang":
        endpoints = spec.get("endpoints")
        if not endpoints or not all(isinstance(u, str) for u in endpoints):
            raise ValueError(f"{role} actor spec: 'endpoints' must be a non-empty list of URLs")
        pool = EndpointPool.from_urls(list(endpoints), vocab_size=len(chat.tokenizer))
        return TokenActor(spec.get("name", role), pool, chat, sampling)
    from dagger_jax.policies.chat_actor import APIChatActor  # only API teachers need it
    for key in ("base_url", "model"):
        if not isinstance(spec.get(key), str):
            raise ValueError(f"{role} actor spec: '{key}' must be a string")
    return APIChatActor.from_spec(spec, sampling)


@dataclasses.dataclass(frozen=True)
class ActorSource:
    """The teacher and the student of a run, as the loop needs them for each collection.

    The teacher is its spec. The student is the served student when `student_endpoints` are
    set (the same spec a rollout-service job carries), else the in-process JAX sampler on the
    latest export. Actors are built inside the event loop that uses them.
    """

    teacher_spec: Mapping[str, Any]
    collect_sampling: SamplingParams      # the student acting in training collection
    eval_sampling: SamplingParams         # the student on held-out tasks (greedy)
    student_endpoints: tuple[str, ...] = ()
    # Export sidecars (rollout/export_sidecar.py), one beside each student server (behind a
    # router too: a weight load must reach every server), that load new weights into them;
    # empty: the servers are asked themselves.
    student_loaders: tuple[str, ...] = ()
    max_batch: int = 4                    # in-process sampler: requests decoded together

    @property
    def weight_loaders(self) -> tuple[str, ...]:
        """Where new student weights are sent: the sidecars, else the servers themselves."""
        return self.student_loaders or self.student_endpoints

    def sampling(self, greedy: bool) -> SamplingParams:
        return self.eval_sampling if greedy else self.collect_sampling

    def student_spec(self, greedy: bool) -> dict[str, Any] | None:
        """The served student as an actor spec; None when the student is in-process."""
        if not self.student_endpoints:
            return None
        return {"kind": "sglang", "endpoints": list(self.student_endpoints),
                "sampling": self.sampling(greedy).to_sglang()}

    def teacher(self, chat: ChatTokenizer) -> Actor:
        return build_actor(self.teacher_spec, chat, "teacher")

    def student(self, chat: ChatTokenizer, greedy: bool, export_dir: PathLike,
                weight_version: str) -> Actor:
        spec = self.student_spec(greedy)
        if spec is not None:
            return build_actor(spec, chat, "student")
        sampler = LocalSampler.from_hf_dir(local_dir(export_dir), tokenizer=None,
                                           max_batch=self.max_batch,
                                           weight_version=weight_version,
                                           vocab_limit=len(chat.tokenizer))
        return TokenActor("student", sampler, chat, self.sampling(greedy))


async def close_actor(actor: Any) -> None:
    """Closes an actor's HTTP sessions or sampler, whichever it holds (None: nothing)."""
    if actor is None:
        return
    close = getattr(actor, "aclose", None) or \
        getattr(getattr(actor, "generator", None), "aclose", None)
    if close is not None:
        await close()
