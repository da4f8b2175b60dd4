"""The in-process JAX sampler behind the `TokenGenerator` interface, with request batching.

Concurrent `generate` / `score` calls queue up; one worker task takes the oldest request and
every other waiting request of the same kind (up to `max_batch`) and runs them as one batch in a
worker thread, so the event loop stays free while JAX computes. Whatever arrives during a batch
goes into the next one. Weights swap atomically between batches: a batch holds the (params,
config, version) it started with.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np

from dagger_jax.models import sampling
from dagger_jax.models.config import Qwen3Config
from dagger_jax.models.hf_import import load_hf_params
from dagger_jax.models.prefix_cache import PrefixCache
from dagger_jax.models.qwen3 import params_shape
from dagger_jax.policies.generation import Generation, SamplingParams
from dagger_jax.tokenizer.load import TOKENIZER_FILES

log = logging.getLogger(__name__)

Decode = Callable[[Sequence[int]], str]
DEFAULT_WEIGHT_VERSION = "default"  # what SGLang reports before any version is set


def load_model(model_dir: str | Path) -> tuple[Any, Qwen3Config]:
    """Params (on the default device) and config of a Hugging Face Qwen3 directory."""
    config = Qwen3Config.from_hf_dir(model_dir)
    shape = params_shape(config)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree_util.tree_map(lambda _: device, shape)
    return load_hf_params(model_dir, config, shape, shardings), config


def load_dir_tokenizer(model_dir: str | Path) -> Any | None:
    """The tokenizer stored next to a model export, or None when there is none."""
    model_dir = Path(model_dir)
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        return None
    import transformers  # only needed when a directory carries a tokenizer
    try:
        return transformers.AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{model_dir}: tokenizer files present but do not load: {e}") from e


def _decoder(tokenizer: Any | None, decode: Decode | None) -> Decode | None:
    if decode is not None:
        return decode
    if tokenizer is None:
        return None
    if not callable(getattr(tokenizer, "decode", None)):
        raise TypeError(f"tokenizer {type(tokenizer).__name__} has no decode(ids) method")
    # SGLang decodes output text with skip_special_tokens=True by default.
    return lambda ids: tokenizer.decode(list(ids), skip_special_tokens=True)


@dataclasses.dataclass(frozen=True)
class _Model:
    params: Any
    config: Qwen3Config
    path: str | None
    version: str
    # K/V of recent sequences under these params (None: off); new weights get a new one.
    prefix_cache: PrefixCache | None = None


@dataclasses.dataclass(frozen=True)
class Sampled:
    """A Generation plus what ended it (stop token id or stop string), as SGLang reports it."""

    generation: Generation
    matched: int | str | None
    max_new_tokens: int


@dataclasses.dataclass(eq=False)  # compared by identity when taken off the queue
class _Job:
    kind: str                      # "generate" | "score"
    payload: Any
    future: asyncio.Future
    queued_at: float


class LocalSampler:
    """A Qwen3 model in this process, answering `generate` and `score` in batches."""

    def __init__(self, params: Any, config: Qwen3Config, *, name: str = "local",
                 tokenizer: Any | None = None, decode: Decode | None = None, max_batch: int = 8,
                 weight_version: str = DEFAULT_WEIGHT_VERSION, model_path: str | None = None,
                 tokenizer_path: str | None = None, eos_token_ids: Sequence[int] | None = None,
                 seed: int | None = None, chunk_steps: int = 64, vocab_limit: int = 0,
                 prefix_cache_entries: int | None = None):
        """vocab_limit: sample only ids below it (0: all); set it to the tokenizer's size when
        the model's vocabulary is padded past the tokenizer's. prefix_cache_entries: sequences
        whose K/V are kept for reuse by later prompts that extend them (models/prefix_cache.py);
        None: 4 per batch row, 0: no reuse."""
        if max_batch < 1:
            raise ValueError(f"LocalSampler.max_batch must be >= 1, got {max_batch}")
        if chunk_steps < 1:
            raise ValueError(f"LocalSampler.chunk_steps must be >= 1, got {chunk_steps}")
        if prefix_cache_entries is None:
            prefix_cache_entries = 4 * max_batch
        if prefix_cache_entries < 0:
            raise ValueError(f"LocalSampler.prefix_cache_entries must be >= 0, got "
                             f"{prefix_cache_entries}")
        self.prefix_cache_entries = prefix_cache_entries
        self.name = name
        self.max_batch = max_batch
        self.chunk_steps = chunk_steps
        self.vocab_limit = int(vocab_limit)
        self.tokenizer_path = tokenizer_path
        self._decode = _decoder(tokenizer, decode)
        self._model = _Model(params, config, model_path, weight_version, self._new_prefix_cache())
        # Like SGLang, generation stops at the model's EOS unless told otherwise.
        if eos_token_ids is None:
            eos_token_ids = () if config.eos_token_id is None else (config.eos_token_id,)
        self.eos_token_ids = tuple(int(t) for t in eos_token_ids)
        self._rng = np.random.default_rng(seed)   # seeds for requests that bring none
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"{name}-jax")
        self._pending: list[_Job] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self.batches_run = 0       # batches computed so far (failed ones included)
        self.requests_run = 0      # requests in those batches

    @classmethod
    def from_hf_dir(cls, model_dir: str | Path, *, tokenizer: Any | None = "auto",
                    **kwargs: Any) -> "LocalSampler":
        """Loads an HF-format export; tokenizer="auto" takes the one in the same directory."""
        params, config = load_model(model_dir)
        tokenizer_path = kwargs.pop("tokenizer_path", None)
        if isinstance(tokenizer, str) and tokenizer == "auto":
            tokenizer = load_dir_tokenizer(model_dir)
            if tokenizer is not None and tokenizer_path is None:
                tokenizer_path = str(model_dir)
        kwargs.setdefault("name", f"local:{Path(model_dir).name}")
        return cls(params, config, tokenizer=tokenizer, model_path=str(model_dir),
                   tokenizer_path=tokenizer_path, **kwargs)

    # --- what callers see ---------------------------------------------------------------

    @property
    def config(self) -> Qwen3Config:
        return self._model.config

    @property
    def weight_version(self) -> str:
        return self._model.version

    @property
    def pending(self) -> int:
        """Requests waiting for a batch (not counting the batch being computed)."""
        return sum(not j.future.done() for j in self._pending)

    @property
    def has_tokenizer(self) -> bool:
        return self._decode is not None

    def decode(self, ids: Sequence[int]) -> str:
        if self._decode is None:
            raise ValueError(f"{self.name}: no tokenizer, cannot turn token ids into text")
        return self._decode(ids)

    def model_info(self) -> dict[str, Any]:
        """The fields of SGLang's GET /get_model_info."""
        return {"model_path": self._model.path, "tokenizer_path": self.tokenizer_path,
                "is_generation": True, "preferred_sampling_params": None,
                "weight_version": self._model.version}

    async def generate(self, input_ids: Sequence[int], params: SamplingParams,
                       session: str | None = None) -> Generation:
        return (await self.sample(input_ids, params)).generation

    async def sample(self, input_ids: Sequence[int], params: SamplingParams) -> Sampled:
        """generate() with the stop match that SGLang's finish_reason carries."""
        ids = self._check_ids(input_ids, "input_ids")
        self._check_request(ids, params)
        if params.max_new_tokens == 0:
            # Nothing to decode (SGLang's "prefill only" request); no batch needed.
            gen = Generation((), (), "length", len(ids), weight_version=self._model.version,
                             endpoint=self.name)
            return Sampled(gen, None, 0)
        seed = params.seed if params.seed is not None else int(self._rng.integers(0, 2**32))
        request = sampling.Request(ids, params.max_new_tokens, params.temperature, params.top_p,
                                   tuple(params.stop_token_ids) + self.eos_token_ids, seed,
                                   vocab_limit=self.vocab_limit)
        return await self._submit("generate", (request, params.stop))

    async def score(self, input_ids: Sequence[int], target_ids: Sequence[int],
                    session: str | None = None) -> tuple[float, ...]:
        """log p(target_ids[i] | input_ids + target_ids[:i]) for each i."""
        ids = self._check_ids(input_ids, "input_ids")
        targets = self._check_ids(target_ids, "target_ids", allow_empty=True)
        if not targets:
            return ()
        context = self._model.config.max_position_embeddings
        if len(ids) + len(targets) > context:
            raise ValueError(f"{self.name}: {len(ids)} input + {len(targets)} target tokens exceed "
                             f"the context length {context}")
        return await self._submit("score", (ids, targets))

    async def load_weights(self, model_dir: str | Path, weight_version: str | None = None) -> None:
        """Reads new weights (off the event loop), then swaps them in between batches.

        A bad directory raises (naming it) and leaves the current weights serving. Without a
        weight_version the old one stays, as SGLang's update_weights_from_disk does.
        """
        loop = asyncio.get_running_loop()
        params, config = await loop.run_in_executor(None, load_model, model_dir)
        version = self._model.version if weight_version is None else str(weight_version)
        self._model = _Model(params, config, str(model_dir), version, self._new_prefix_cache())
        log.info("%s: loaded weights from %s (version %s)", self.name, model_dir, version)

    def _new_prefix_cache(self) -> PrefixCache | None:
        return PrefixCache(self.prefix_cache_entries) if self.prefix_cache_entries else None

    @property
    def prefix_cache(self) -> PrefixCache | None:
        """The cache of the weights now serving (hits / misses / reused_tokens counters)."""
        return self._model.prefix_cache

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        self._executor.shutdown(wait=True)

    # --- validation -----------------------------------------------------------------------

    def _check_ids(self, ids: Sequence[int], field: str, allow_empty: bool = False) -> tuple[int, ...]:
        vocab = self._model.config.vocab_size
        out = []
        for i, t in enumerate(ids):
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
                raise ValueError(f"{field}[{i}] = {t!r} is not an integer token id")
            if not 0 <= t < vocab:
                raise ValueError(f"{field}[{i}] = {t} is outside the vocabulary [0, {vocab}) "
                                 f"of {self.name}")
            out.append(int(t))
        if not out and not allow_empty:
            raise ValueError(f"{field} is empty: need at least one token")
        return tuple(out)

    def _check_request(self, ids: tuple[int, ...], params: SamplingParams) -> None:
        if params.stop and self._decode is None:
            raise ValueError(f"{self.name}: stop strings {list(params.stop)} need a tokenizer; "
                             "give LocalSampler a tokenizer or decode callable, or use "
                             "stop_token_ids")
        context = self._model.config.max_position_embeddings
        if len(ids) + params.max_new_tokens > context:
            raise ValueError(f"{self.name}: {len(ids)} input tokens + max_new_tokens="
                             f"{params.max_new_tokens} exceed the context length {context}")

    # --- batching ---------------------------------------------------------------------------

    async def _submit(self, kind: str, payload: Any) -> Any:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._worker is None or self._worker.done():
            # First use, or a new event loop (the old one's task, event and futures are dead).
            self._pending = [j for j in self._pending if j.future.get_loop() is loop]
            self._loop, self._wakeup = loop, asyncio.Event()
            self._worker = loop.create_task(self._work(), name=f"{self.name}-batcher")
        job = _Job(kind, payload, loop.create_future(), time.monotonic())
        self._pending.append(job)
        self._wakeup.set()
        return await job.future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._pending = [j for j in self._pending if not j.future.done()]  # drop cancelled
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            kind = self._pending[0].kind
            batch = [j for j in self._pending if j.kind == kind][:self.max_batch]
            self._pending = [j for j in self._pending if j not in batch]
            model = self._model
            run = self._run_generate if kind == "generate" else self._run_score
            try:
                results = await loop.run_in_executor(self._executor, run, model,
                                                     [j.payload for j in batch])
            except Exception as e:  # a failed batch fails its requests, not the worker
                log.exception("%s: %s batch of %d failed", self.name, kind, len(batch))
                for j in batch:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            finally:
                self.batches_run += 1
                self.requests_run += len(batch)
            now = time.monotonic()
            for j, result in zip(batch, results):
                if not j.future.done():
                    j.future.set_result(self._finish(j, result, model, now))

    def _finish(self, job: _Job, result: Any, model: _Model, now: float) -> Any:
        if job.kind == "score":
            return result
        request, stop = job.payload
        c: sampling.Completion = result
        text = ""
        if self._decode is not None:
            text = self._decode(c.tokens)
            if isinstance(c.matched, str):
                # SGLang trims a matched stop string (and what follows) from the text.
                text = text[:text.find(c.matched)] if c.matched in text else text
        gen = Generation(c.tokens, c.logprobs, c.finish_reason, len(request.prompt),
                         latency_s=now - job.queued_at, text=text, weight_version=model.version,
                         endpoint=self.name)
        return Sampled(gen, c.matched, request.max_new_tokens)

    def _run_generate(self, model: _Model, payloads: list) -> list[sampling.Completion]:
        requests = [request for request, _ in payloads]
        stops = [tuple(stop) for _, stop in payloads]
        check = self._stop_check(stops) if any(stops) else None
        # Always max_batch rows: concurrent episodes come and go, and every other batch size
        # would be another compile.
        return sampling.generate(model.params, model.config, requests, stop_check=check,
                                 chunk_steps=self.chunk_steps, min_batch=self.max_batch,
                                 prefix_cache=model.prefix_cache)

    def _run_score(self, model: _Model, payloads: list) -> list[tuple[float, ...]]:
        sequences = [list(ids) + list(targets) for ids, targets in payloads]
        logprobs = sampling.token_logprobs(model.params, model.config, sequences)
        return [tuple(float(x) for x in lp[-len(targets):])
                for lp, (_, targets) in zip(logprobs, payloads)]

    def _stop_check(self, stops: list[tuple[str, ...]]) -> sampling.StopCheck:
        decode = self._decode

        def check(row: int, tokens: Sequence[int], checked: int) -> tuple[int, str] | None:
            if not stops[row] or not any(s in decode(tokens) for s in stops[row]):
                return None
            # The shortest prefix whose text holds a stop string ends the generation there.
            for n in range(max(checked, 1), len(tokens) + 1):
                text = decode(tokens[:n])
                for s in stops[row]:
                    if s in text:
                        return n, s
            return None

        return check
