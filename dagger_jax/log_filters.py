"""Keeps library chatter (Orbax logs a dozen INFO lines per checkpoint) out of run logs."""

from __future__ import annotations

import logging

_NOISY = ("orbax", "tensorstore", "etils", "fsspec", "gcsfs")


class _DropLibraryInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not any(n in record.pathname for n in _NOISY)


def quiet_library_logs() -> None:
    """Drops INFO records that Orbax and friends (fsspec's read-ahead cache: one per file a
    gs:// workdir reads) send through absl's logger or their own."""
    logging.getLogger("absl").addFilter(_DropLibraryInfo())
    for name in ("fsspec", "gcsfs"):
        logging.getLogger(name).setLevel(logging.WARNING)
