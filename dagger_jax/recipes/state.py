"""The outer loop's phase state (`<workdir>/state.json`): what it has decided so far, rewritten
atomically after every decision so a killed run resumes where it was."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from dagger_jax.storage import layout
from dagger_jax.storage.store import PathLike, read_text_whole, write_text_atomic

PHASES = ("collect", "train", "export", "evaluate")


@dataclasses.dataclass
class LoopState:
    iteration: int = 1
    phase: str = "collect"
    train_start: int | None = None
    train_end: int | None = None
    weight_version: str = "iter000"
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @classmethod
    def load(cls, workdir: PathLike) -> "LoopState":
        path = layout.state_file(workdir)
        if not path.exists():
            return cls()
        try:
            state = cls(**json.loads(read_text_whole(path)))
        except (json.JSONDecodeError, TypeError) as e:
            raise ValueError(f"{path} is not a loop state this code can read: {e}") from None
        if state.phase not in PHASES:
            raise ValueError(f"{path}: phase {state.phase!r} is not one of {PHASES}")
        return state

    def save(self, workdir: PathLike) -> None:
        write_text_atomic(layout.state_file(workdir), json.dumps(dataclasses.asdict(self),
                                                                 indent=2))
