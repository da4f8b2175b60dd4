"""Orbax checkpoints of the train state: save, restore onto the mesh, resume.

A step directory holds three items: `params`, `opt_state` and `meta` (JSON: the model config
and step). A step with no `opt_state` (as `tools/import_hf.py` writes) is a valid start: the
optimizer state is then initialised fresh from the restored params.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from dagger_jax.models.config import Qwen3Config
from dagger_jax.storage.store import is_remote, store_path

# Model config fields that set the context window, not the weights' shapes or meaning.
CONTEXT_FIELDS = ("max_position_embeddings", "rope_scaling")

ITEMS = ("params", "opt_state", "meta")
FORMAT_VERSION = 1


def _abstract(tree: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


class ModelMismatch(ValueError):
    """A checkpoint written for another model shape."""


class DamagedCheckpoint(RuntimeError):
    """A checkpoint step whose files cannot be read; the message is one line naming the step
    and, where the reader said, the file."""

    def __init__(self, step: int, directory: Any, error: Exception):
        text = str(error)
        named = re.findall(r'file "([^"]+)"', text) or re.findall(r"(gs://[^\s'\"]+)", text)
        reason = text.strip().splitlines()[0][:160] if text.strip() else type(error).__name__
        super().__init__(f"checkpoint step {step} ({directory}) cannot be read: "
                         f"{named[-1] if named else type(error).__name__}: "
                         f"{_core(text) or reason}")
        self.step = step


class CheckpointWriteFailed(RuntimeError):
    """A step could not be written (a full disk, a refused bucket); one line naming the step,
    the path and, on a local disk, the space left. The partial step is removed."""


class _DropRelayedErrors(logging.Filter):
    """Orbax logs an error (with its traceback) in each worker thread of a failed save and then
    raises it in the caller, where save() reports it in one line: the thread copies go."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "_SignalingThread.run() raised an exception" not in str(record.msg)


_RELAYED = _DropRelayedErrors()


def _space_left(directory: Path) -> str:
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    return f"{usage.free / 2**20:.1f} MiB free of {usage.total / 2**20:.1f} MiB on that filesystem"


def _core(text: str) -> str:
    """The tensorstore / OS reason of an unreadable file, without the driver spec around it."""
    found = re.search(r"(Requested byte range \[\d+, \d+\) is not valid for value of size \d+|"
                      r"No such file or directory|[Cc]hecksum mismatch|Unexpected end of data)",
                      text)
    return found.group(1).strip() if found else ""


class Checkpointer:
    """One run's checkpoints under `<workdir>/checkpoints`."""

    def __init__(self, directory: str | Path, max_to_keep: int | None = 3):
        self.directory = store_path(directory)  # local, or gs:// (Orbax writes there itself)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=False)
        where = self.directory if is_remote(self.directory) else self.directory.absolute()
        self._manager = ocp.CheckpointManager(where, options=options, item_names=ITEMS)
        logging.getLogger("absl").addFilter(_RELAYED)  # a set: added once however many we make

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, params: Any, opt_state: Any | None, model_config: Qwen3Config,
             extra_meta: dict | None = None) -> None:
        meta = {"format": FORMAT_VERSION, "step": int(step), "model_config": model_config.to_dict(),
                **(extra_meta or {})}
        items = {"params": ocp.args.StandardSave(params), "meta": ocp.args.JsonSave(meta)}
        if opt_state is not None:
            items["opt_state"] = ocp.args.StandardSave(opt_state)
        try:
            self._manager.save(int(step), args=ocp.args.Composite(**items), force=True)
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - tensorstore / OS errors come in many types
            raise self._write_failed(int(step), e) from e

    def _write_failed(self, step: int, error: Exception) -> CheckpointWriteFailed:
        text = str(error).strip()
        reason = ("no space left on device" if "RESOURCE_EXHAUSTED" in text or "No space" in text
                  else (text.splitlines()[0][:200] if text else type(error).__name__))
        if is_remote(self.directory):
            return CheckpointWriteFailed(f"checkpoint step {step} could not be written to "
                                         f"{self.directory}: {reason}")
        for partial in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
            shutil.rmtree(partial, ignore_errors=True)  # gives back what the failed write took
        return CheckpointWriteFailed(f"checkpoint step {step} could not be written to "
                                     f"{self.directory.absolute()}: {reason} "
                                     f"({_space_left(self.directory)})")

    def _step_or_latest(self, step: int | None) -> int:
        step = self.latest_step() if step is None else step
        if step is None or step not in self.all_steps():
            raise FileNotFoundError(
                f"{self.directory}: no checkpoint{'' if step is None else f' for step {step}'} "
                f"(steps present: {self.all_steps()})")
        return step

    def meta(self, step: int | None = None) -> dict:
        step = self._step_or_latest(step)
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def check_model_config(self, step: int, model_config: Qwen3Config) -> None:
        """Refuses a checkpoint written for another model shape, naming what differs. The
        context window (max_position_embeddings, rope_scaling) may differ: extending a
        pretrained model's context with YaRN is what it is for."""
        saved = self.meta(step).get("model_config", {})
        ours = model_config.to_dict()
        diffs = {k: (saved.get(k), v) for k, v in ours.items()
                 if saved.get(k) != v and k not in CONTEXT_FIELDS}
        extended = {k: (saved.get(k), ours[k]) for k in CONTEXT_FIELDS if saved.get(k) != ours[k]}
        if extended and not diffs:
            logging.info("checkpoint %s: context window %s", step,
                         ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in extended.items()))
        if diffs:
            listed = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in sorted(diffs.items()))
            raise ModelMismatch(f"checkpoint {self.directory / str(step)} was written for a different "
                             f"model config ({listed})")

    def has_opt_state(self, step: int) -> bool:
        return (self.directory / str(step) / "opt_state").is_dir()

    def restore(self, step: int | None, model_config: Qwen3Config, params_target: Any,
                opt_state_target: Any | None) -> tuple[int, Any, Any | None]:
        """(step, params, opt_state or None), restored with the targets' shardings. A step whose
        files cannot be read raises DamagedCheckpoint naming the step and the file."""
        step = self._step_or_latest(step)
        try:
            self.check_model_config(step, model_config)
            items = {"params": ocp.args.StandardRestore(_abstract(params_target))}
            if opt_state_target is not None and self.has_opt_state(step):
                items["opt_state"] = ocp.args.StandardRestore(_abstract(opt_state_target))
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except ModelMismatch:
            raise
        except Exception as e:  # Orbax / tensorstore report unreadable files in many types
            raise DamagedCheckpoint(step, self.directory / str(step), e) from None
        return step, restored["params"], restored.get("opt_state") if "opt_state" in items else None

    def restore_intact(self, model_config: Qwen3Config, params_target: Any,
                       opt_state_target: Any | None, on_damaged: str = "previous"
                       ) -> tuple[int, Any, Any | None]:
        """The newest step that restores. A damaged one is reported in one line and moved aside
        (`<step>.damaged`, kept for inspection; a resumed run saves that step again), then the
        step before it is tried; with on_damaged="stop" the DamagedCheckpoint is raised."""
        while True:
            step = self._step_or_latest(None)
            try:
                return self.restore(step, model_config, params_target, opt_state_target)
            except DamagedCheckpoint as damaged:
                if on_damaged == "stop" or len(self.all_steps()) < 2:
                    raise
                aside = self.directory / f"{step}.damaged"
                try:
                    (self.directory / str(step)).rename(aside)
                except FileNotFoundError:
                    pass  # another process of the run moved it first
                self._manager.reload()
                logging.warning("%s; moved to %s, resuming from step %s", damaged, aside,
                                self.latest_step())

    def close(self) -> None:
        self._manager.close()
