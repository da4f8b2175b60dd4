"""Entry point: `python -m dagger_jax.main --config=configs/local.py --workdir=W`.

Wires a config into the parts: tokenizer, data, trainer, export. Until the DAgger loop exists,
the job trains the student on the built-in sample conversations.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jax
from absl import app, flags
from jax.experimental import multihost_utils
from ml_collections import config_flags

from dagger_jax.data.encode import encode_chat
from dagger_jax.data.packing import batch_for_step, pack_examples
from dagger_jax.data.sample_corpus import sample_conversations, sample_texts
from dagger_jax.models.config import Qwen3Config
from dagger_jax.models.hf_export import export_hf
from dagger_jax.recipes.loop import Loop
from dagger_jax import workdir as layout
from dagger_jax.log_filters import quiet_library_logs
from dagger_jax.tokenizer import ensure_default_tokenizer, load_tokenizer, save_tokenizer
from dagger_jax.train.trainer import Trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (get_config).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of this run (checkpoints, logs, exports).")
flags.mark_flags_as_required(["config", "workdir"])

# Corpus size for the embedded default tokenizer; fixed so the vocabulary is reproducible.
_TOKENIZER_CORPUS = 400


def initialize_distributed(config: Any) -> None:
    d = config.distributed
    if not d.enabled:
        return
    kwargs = {}
    if d.coordinator_address:
        kwargs = dict(coordinator_address=d.coordinator_address, num_processes=d.num_processes,
                      process_id=d.process_id)
    jax.distributed.initialize(**kwargs)


def prepare_tokenizer(config: Any, workdir: Path) -> Path:
    """The run's tokenizer, copied into the workdir on first start.

    Source, in order: what the workdir already holds (a resumed run, or `tools/import_hf.py`),
    `config.tokenizer.dir`, else the embedded default BPE trained on the sample corpus.
    """
    target = layout.tokenizer_dir(workdir)
    if layout.has_tokenizer(workdir):
        return target
    if config.tokenizer.dir:
        source = Path(config.tokenizer.dir)
    else:
        source = ensure_default_tokenizer(workdir / ".tokenizer_build",
                                          sample_texts(_TOKENIZER_CORPUS, seed=1_000_003),
                                          config.tokenizer.vocab_size)
    if jax.process_index() == 0:
        save_tokenizer(load_tokenizer(source), target)
    # The other processes read what process 0 just wrote.
    multihost_utils.sync_global_devices("tokenizer written")
    return target


def sample_batches(config: Any, tokenizer) -> Any:
    if config.data.source != "sample":
        raise ValueError(f"config.data.source={config.data.source!r}: only 'sample' exists so far")
    conversations = sample_conversations(config.data.num_examples, seed=config.seed)
    packed = pack_examples([encode_chat(tokenizer, c) for c in conversations], config.train.seq_len)
    return lambda step: batch_for_step(packed, step, config.train.batch_size, config.seed)


def run(config: Any, workdir: str | Path) -> Path | None:
    """Trains per config in workdir; returns the HF export directory (process 0) if exported."""
    if config.train.round_schedule and not config.loop.enabled:
        raise ValueError(f"config.train.round_schedule={config.train.round_schedule!r} restarts the "
                         "rate in every outer-loop round; the plain job has none (set "
                         "config.loop.enabled or use config.train.schedule)")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model_config = Qwen3Config.from_dict(config.model.to_dict(), where="config.model")
    tokenizer_dir = prepare_tokenizer(config, workdir)
    tokenizer = load_tokenizer(tokenizer_dir)
    if len(tokenizer) > model_config.vocab_size:
        raise ValueError(f"tokenizer {tokenizer_dir} has {len(tokenizer)} tokens but "
                         f"config.model.vocab_size is {model_config.vocab_size}")
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    if config.loop.enabled:
        history = Loop(config, workdir, model_config, tokenizer_dir).run()
        print_history(config, history)
        return layout.export_dir(workdir)
    trainer = Trainer(config, workdir, model_config)
    state = trainer.fit(sample_batches(config, tokenizer))
    if not config.export.at_end:
        return None
    out = export_hf(state.params, model_config, layout.export_dir(workdir), tokenizer_dir=tokenizer_dir,
                    dtype=config.export.dtype, max_shard_bytes=config.export.max_shard_bytes)
    if out is not None:
        logging.info("exported step %d to %s", int(state.step), out)
        (out / "dagger_jax.json").write_text(json.dumps({"step": int(state.step)}))
    return out


def print_history(config: Any, history: list[dict]) -> None:
    """One row per iteration: the numbers the recipes are compared by."""
    if jax.process_index() != 0 or not history:
        return
    columns = ("iteration", "beta", "labelled_turns", "trained_labels", "train_steps",
               "resolve_rate", "submission_rate", "parse_error_rate", "mean_turns", "loop_rate",
               "nll_student_states", "nll_teacher_states")
    print(f"recipe {config.loop.recipe}")
    print(" ".join(f"{c:>18}" for c in columns))
    for row in history:
        print(" ".join(f"{row.get(c, float('nan')):>18.4g}" if isinstance(row.get(c), float)
                       else f"{str(row.get(c, '-')):>18}" for c in columns))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    quiet_library_logs()
    initialize_distributed(config)
    run(config, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
