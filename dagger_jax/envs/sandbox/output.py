"""Caps a command's output: keeps its head and tail, counts what was dropped in between."""

from __future__ import annotations


class OutputCapture:
    """Accumulates a byte stream in bounded memory, however much the command prints.

    The head shows how a command started, the tail how it ended (tracebacks, test summaries),
    so both are kept; the middle is replaced by a marker naming how many bytes were dropped.
    """

    def __init__(self, limit_bytes: int):
        if limit_bytes < 2:
            raise ValueError(f"output limit must be at least 2 bytes, got {limit_bytes}")
        self._head_limit = limit_bytes // 2
        self._tail_limit = limit_bytes - self._head_limit
        self._head = bytearray()
        self._tail = bytearray()
        self.total_bytes = 0

    def feed(self, chunk: bytes) -> None:
        self.total_bytes += len(chunk)
        room = self._head_limit - len(self._head)
        if room > 0:
            self._head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self._tail += chunk
            # Trim lazily so a flood of small chunks costs amortised O(1) per byte.
            if len(self._tail) > 2 * self._tail_limit:
                del self._tail[:-self._tail_limit]

    @property
    def dropped_bytes(self) -> int:
        return self.total_bytes - len(self._head) - min(len(self._tail), self._tail_limit)

    @property
    def truncated(self) -> bool:
        return self.dropped_bytes > 0

    def data(self) -> bytes:
        """Everything that was fed; only valid while nothing was dropped."""
        if self.truncated:
            raise ValueError(f"output was truncated ({self.dropped_bytes} bytes dropped)")
        return bytes(self._head) + bytes(self._tail)

    def text(self) -> str:
        """The kept output, decoded (invalid UTF-8 replaced), with the marker where bytes went."""
        tail = bytes(self._tail[-self._tail_limit:]) if self._tail else b""
        if not self.truncated:
            return (bytes(self._head) + tail).decode("utf-8", errors="replace")
        marker = (f"\n[... output truncated: {self.dropped_bytes:,} of {self.total_bytes:,} bytes "
                  "dropped ...]\n")
        return (bytes(self._head).decode("utf-8", errors="replace") + marker
                + tail.decode("utf-8", errors="replace"))
