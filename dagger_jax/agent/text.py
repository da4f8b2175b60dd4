"""Text that every later step can take."""

from __future__ import annotations

import re

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def well_formed(text: str) -> str:
    """text with each lone surrogate (which no tokenizer, UTF-8 writer or msgpack takes) as
    U+FFFD, one character for one, so character offsets stay put. Text from an HTTP API's
    JSON escapes or from a file read with surrogateescape can hold them."""
    return _LONE_SURROGATE.sub("\ufffd", text) if _LONE_SURROGATE.search(text) else text
