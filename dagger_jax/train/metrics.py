"""Training metrics to TensorBoard (tensorboardX), written by process 0 only.

tensorboardX writes local files; for a workdir in object storage the event files are written
to a local directory and copied to the store after every flush (storage/store.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Mapping

import jax

from dagger_jax.storage.store import StorePath, is_remote, store_path


class MetricWriter:
    def __init__(self, logdir: str | Path | StorePath):
        self._writer = None
        self._store = store_path(logdir) if is_remote(logdir) else None
        if jax.process_index() == 0:
            from tensorboardX import SummaryWriter
            self._local = Path(tempfile.mkdtemp(prefix="tensorboard-")) if self._store \
                else Path(logdir)
            self._writer = SummaryWriter(str(self._local))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if self._writer is None:
            return
        for name, value in scalars.items():
            self._writer.add_scalar(f"train/{name}", float(value), step)
        self._writer.flush()
        if self._store is not None:
            for file in self._local.iterdir():
                (self._store / file.name).write_bytes(file.read_bytes())

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
