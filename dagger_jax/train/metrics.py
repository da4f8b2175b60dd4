"""Training metrics to TensorBoard (tensorboardX), written by process 0 only."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import jax


class MetricWriter:
    def __init__(self, logdir: str | Path):
        self._writer = None
        if jax.process_index() == 0:
            from tensorboardX import SummaryWriter
            self._writer = SummaryWriter(str(logdir))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if self._writer is None:
            return
        for name, value in scalars.items():
            self._writer.add_scalar(f"train/{name}", float(value), step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
