"""What every token-level model backend takes and returns: the SGLang client, the endpoint pool,
the local JAX sampler, and the stand-in server all speak these types.

The wire format is SGLang's native `/generate` (token-in / token-out): `input_ids` in, a
`sampling_params` object, `output_ids` and `meta_info.output_token_logprobs` out. These
dataclasses are that format's content, independent of the transport.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol, Sequence

FINISH_REASONS = ("stop", "length", "abort")


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """One request's sampling settings (the fields of SGLang's `sampling_params` we use).

    temperature 0 means greedy. `stop` are strings, `stop_token_ids` token ids; a generation
    ends at either (the stop token itself is included in output_ids, as SGLang returns it).
    """

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p!r}")
        if self.max_new_tokens < 0:
            raise ValueError(f"SamplingParams.max_new_tokens must be >= 0, got {self.max_new_tokens!r}")
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(int(i) for i in self.stop_token_ids))

    def to_sglang(self) -> dict[str, Any]:
        """The `sampling_params` object of a native /generate request."""
        out: dict[str, Any] = {"temperature": self.temperature, "top_p": self.top_p,
                               "max_new_tokens": self.max_new_tokens}
        if self.stop:
            out["stop"] = list(self.stop)
        if self.stop_token_ids:
            out["stop_token_ids"] = list(self.stop_token_ids)
        if self.seed is not None:
            out["sampling_seed"] = self.seed
        return out

    @classmethod
    def from_sglang(cls, data: dict[str, Any], where: str = "sampling_params") -> "SamplingParams":
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
        known = {"temperature", "top_p", "max_new_tokens", "stop", "stop_token_ids", "sampling_seed"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where}: unsupported keys {unknown} (supported: {sorted(known)})")
        stop = data.get("stop") or ()
        if isinstance(stop, str):
            stop = (stop,)
        try:
            return cls(temperature=float(data.get("temperature", 1.0)),
                       top_p=float(data.get("top_p", 1.0)),
                       max_new_tokens=int(data.get("max_new_tokens", 128)),
                       stop=tuple(stop), stop_token_ids=tuple(data.get("stop_token_ids") or ()),
                       seed=data.get("sampling_seed"))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None


@dataclasses.dataclass(frozen=True)
class Generation:
    """One completion: the generated ids exactly as produced, their sampling log-probs, why it
    stopped, and where / how long."""

    output_ids: tuple[int, ...]
    logprobs: tuple[float, ...]          # log p(token) under the sampling distribution's model
    finish_reason: str                   # stop | length | abort
    prompt_tokens: int
    latency_s: float = 0.0
    text: str = ""
    weight_version: str | None = None    # which weights produced it (server's model version)
    endpoint: str | None = None          # which server answered

    def __post_init__(self) -> None:
        object.__setattr__(self, "output_ids", tuple(int(i) for i in self.output_ids))
        object.__setattr__(self, "logprobs", tuple(float(x) for x in self.logprobs))
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"Generation.finish_reason {self.finish_reason!r} not in {FINISH_REASONS}")
        if len(self.logprobs) not in (0, len(self.output_ids)):
            raise ValueError(f"Generation: {len(self.logprobs)} logprobs for "
                             f"{len(self.output_ids)} output ids")


class TokenGenerator(Protocol):
    """A model behind token ids: the SGLang client, the endpoint pool, the local sampler."""

    name: str

    async def generate(self, input_ids: Sequence[int], params: SamplingParams,
                       session: str | None = None) -> Generation:
        """Samples a continuation of input_ids. `session` keys sticky routing (one episode)."""
        ...

    async def score(self, input_ids: Sequence[int], target_ids: Sequence[int],
                    session: str | None = None) -> tuple[float, ...]:
        """log p(target_ids[i] | input_ids + target_ids[:i]) for each i (no sampling)."""
        ...
