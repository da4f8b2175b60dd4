"""Entry point: `python -m dagger_jax.main --config=configs/local.py[:recipe] --workdir=W`.

The one place that wires a run: it reads the config once into settings (settings.py), then
builds, in order, the workdir and its tokenizer, the trainer, and for the outer loop the task
sets, the actors, the sandbox backend and the loop itself. Without a recipe the job is SFT on a
fixed set of trajectory shards (config.data.dirs), read by the loop's own pipeline.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import jax
from absl import app, flags
from jax.experimental import multihost_utils
from ml_collections import config_flags

from dagger_jax.agent import ChatTokenizer
from dagger_jax.data.trajectory_pipeline import TrajectoryPipeline
from dagger_jax.envs.sandbox import make_backend
from dagger_jax.envs.tasks.sets import TaskSets, load_task_sets
from dagger_jax.envs.tasks.task import tasks_jsonl
from dagger_jax.log_filters import quiet_library_logs
from dagger_jax.models.hf_export import export_hf
from dagger_jax.models.sharding import RowBlock
from dagger_jax.recipes.loop import Loop, LoopParts
from dagger_jax.settings import RunSettings, read_settings
from dagger_jax.storage import layout
from dagger_jax.storage.store import (StorePath, StoreUnavailable, check_writable, is_remote,
                                      local_dir, publish, staged_dir, store_path,
                                      write_text_atomic)
from dagger_jax.tokenizer import load_tokenizer, save_tokenizer
from dagger_jax.tokenizer.default import default_tokenizer
from dagger_jax.rollout.faults import CollectionIncomplete
from dagger_jax.train.checkpoint import CheckpointWriteFailed, DamagedCheckpoint
from dagger_jax.train.processes import PeerLost, agree_on_config
from dagger_jax.train.trainer import Trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (get_config).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of this run (checkpoints, logs, exports).")
flags.mark_flags_as_required(["config", "workdir"])

def initialize_distributed(config: Any) -> None:
    """jax.distributed.initialize() when config.distributed asks for it (before any device use;
    the rest of the config is read, and checked, by run())."""
    d = config.distributed
    if not d.enabled:
        return
    kwargs = {}
    if d.coordinator_address:
        kwargs = dict(coordinator_address=d.coordinator_address, num_processes=d.num_processes,
                      process_id=d.process_id)
    jax.distributed.initialize(**kwargs)


def prepare_tokenizer(workdir: StorePath, source_dir: str = "", vocab_size: int = 1024) -> Path:
    """The run's tokenizer, copied into the workdir on first start; returns a local directory
    holding it (the workdir's own, or for a workdir in object storage a local copy).

    Source, in order: what the workdir already holds (a resumed run, or `tools/import_hf.py`),
    `source_dir` (config.tokenizer.dir), else the embedded default BPE of `vocab_size`.
    """
    target = layout.tokenizer_dir(workdir)
    if not layout.has_tokenizer(workdir):
        if source_dir:
            source = local_dir(source_dir)
        else:
            build = workdir / ".tokenizer_build" if not is_remote(workdir) else None
            source = default_tokenizer(build, vocab_size)
        if jax.process_index() == 0:
            with staged_dir(target) as staged:
                save_tokenizer(load_tokenizer(source), staged)
        # The other processes read what process 0 just wrote.
        multihost_utils.sync_global_devices("tokenizer written")
    return local_dir(target)


def fixed_data(settings: RunSettings, row_block: RowBlock) -> TrajectoryPipeline:
    """The plain job's data: every episode of config.data.dirs, cross-entropy on its labels (as
    the loop's SFT trains), this process's rows of each global batch (Trainer.row_block)."""
    t = settings.train
    return TrajectoryPipeline(list(settings.data_dirs), seq_len=t.seq_len, batch_size=t.batch_size,
                              seed=t.seed, weighting="one", process_index=row_block.index,
                              process_count=row_block.count)


def run(config: Any, workdir: str | Path) -> Path | None:
    """Trains per config in workdir; returns the HF export directory (process 0) if exported."""
    agree_on_config(config, str(workdir))  # every process of a multi-host run: the same run
    settings = read_settings(config)  # every check before the workdir is touched
    workdir = store_path(workdir)
    if is_remote(workdir) and settings.loop is not None:
        refuse_remote_loop_parts(settings, workdir)
    check_writable(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = prepare_tokenizer(workdir, settings.tokenizer_dir, settings.tokenizer_vocab_size)
    tokenizer = load_tokenizer(tokenizer_dir)
    settings = settings.with_tokenizer_size(len(tokenizer))
    if jax.process_index() == 0:
        layout.config_file(workdir).write_text(config.to_json_best_effort(indent=2))
    trainer = Trainer(settings.train, workdir, settings.model)
    export = functools.partial(_export, settings, tokenizer_dir)
    if settings.loop is not None:
        history = Loop(settings.loop, workdir, loop_parts(settings, workdir, trainer, export,
                                                          tokenizer_dir)).run()
        print_history(config.loop.recipe, history)
        return layout.export_dir(workdir)
    state = trainer.fit(fixed_data(settings, trainer.row_block).batch_fn(), local_batches=True)
    if not settings.export.at_end:
        return None
    out = export(state.params, layout.export_dir(workdir))
    if out is not None:
        logging.info("exported step %d to %s", int(state.step), out)
        (out / "dagger_jax.json").write_text(json.dumps({"step": int(state.step)}))
    return out


def refuse_remote_loop_parts(settings: RunSettings, workdir: StorePath) -> None:
    """A student fleet loads exports from its own disk: with a gs:// workdir the weights must
    go through export sidecars, which copy them from the bucket (refused before the run)."""
    actors = settings.actors
    if actors.student_endpoints and not actors.student_loaders:
        raise ValueError(
            f"--workdir={workdir}: the student servers (config.loop.student_endpoints) cannot "
            "read exports in a bucket; start an export sidecar beside each "
            "(launch/sglang_fleet.sh --sidecar-port, or python -m "
            "dagger_jax.rollout.export_sidecar) and set config.loop.student_loaders to their URLs")


def _export(settings: RunSettings, tokenizer_dir: Path, params: Any,
            out: StorePath) -> StorePath | None:
    """The HF export of `params` at `out` (collective; process 0 writes and returns it). Into
    object storage it is written locally, then published (storage/store.py)."""
    def write(where: Path) -> Path | None:
        return export_hf(params, settings.model, where, tokenizer_dir=tokenizer_dir,
                         dtype=settings.export.dtype,
                         max_shard_bytes=settings.export.max_shard_bytes)
    if not is_remote(out):
        return write(out)
    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        written = write(Path(tmp) / "export")
        if written is None:
            return None
        publish(written, out)
    return out


def loop_parts(settings: RunSettings, workdir: Path, trainer: Trainer, export: Any,
               tokenizer_dir: Path) -> LoopParts:
    """The outer loop's parts: task sets, actors, the student's chat encoding, sandboxes."""
    loop = settings.loop
    tasks = load_task_sets(settings.tasks, loop.eval.num_tasks if loop.eval.enabled else 0)
    return LoopParts(trainer=trainer, export=export, tasks=tasks, actors=settings.actors,
                     chat=ChatTokenizer.from_path(tokenizer_dir),
                     backend=make_backend(loop.sandbox),
                     train_tasks_file=functools.partial(write_train_tasks, tasks, workdir))


def write_train_tasks(tasks: TaskSets, workdir: StorePath) -> StorePath:
    """The training tasks as a task file in the workdir (for the rollout service, which reads
    files), written once: an existing file with the same content is reused, a different one
    replaced. Every process of a multi-host run may do this at once: each replaces the file as
    a whole with the same text (storage.write_text_atomic)."""
    path = layout.train_tasks_file(workdir)
    text = tasks_jsonl(tasks.train)
    if path.exists():
        if path.read_text() == text:
            return path
        logging.warning("%s holds other tasks than this run's training tasks: replaced", path)
    write_text_atomic(path, text)
    return path


def print_history(recipe: str, history: list[dict]) -> None:
    """One row per iteration: the numbers the recipes are compared by."""
    if jax.process_index() != 0 or not history:
        return
    columns = ("iteration", "beta", "labelled_turns", "trained_labels", "train_steps",
               "resolve_rate", "submission_rate", "parse_error_rate", "mean_turns", "loop_rate",
               "nll_student_states", "nll_teacher_states")
    print(f"recipe {recipe}")
    print(" ".join(f"{c:>18}" for c in columns))
    for row in history:
        print(" ".join(f"{row.get(c, float('nan')):>18.4g}" if isinstance(row.get(c), float)
                       else f"{str(row.get(c, '-')):>18}" for c in columns))


# Faults of the run's surroundings that the run was left resumable from: reported in one line
# (what, where, what to do), not a traceback.
ONE_LINE_ERRORS = (StoreUnavailable, CheckpointWriteFailed, DamagedCheckpoint,
                   CollectionIncomplete, PeerLost)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    quiet_library_logs()
    initialize_distributed(config)
    try:
        run(config, _WORKDIR.value)
    except ONE_LINE_ERRORS as e:  # their messages say what happened and what to do
        sys.exit(f"dagger_jax.main: {e}")


if __name__ == "__main__":
    app.run(main)
