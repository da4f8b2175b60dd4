"""Actors from JSON-able specs, so a collection job can travel over RPC.

    {"kind": "expert", "search": "function"}             the scripted expert (knows the fix)
    {"kind": "sglang", "endpoints": [url, ...], "sampling": {...SGLang sampling_params}}
    {"kind": "openai", "base_url": url, "model": name, "sampling": {...}}   (API teachers)
"""

from __future__ import annotations

from typing import Any, Mapping

from dagger_jax.agent import ChatTokenizer
from dagger_jax.policies.actors import Actor, ExpertActor, TokenActor
from dagger_jax.policies.endpoint_pool import EndpointPool
from dagger_jax.policies.generation import SamplingParams
from dagger_jax.policies.scripted_expert import ScriptedExpert

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
