"""Where things live in a run's workdir, so main and the tools agree on one layout.

<workdir>/checkpoints/<step>/   Orbax: params, opt_state, meta
<workdir>/tokenizer/            the run's tokenizer (copied in, so the workdir is self-contained)
<workdir>/tensorboard/          metrics
<workdir>/export/               the latest Hugging Face export
<workdir>/config.json           the config of the last start
"""

from __future__ import annotations

from pathlib import Path


def checkpoints_dir(workdir: str | Path) -> Path:
    return Path(workdir) / "checkpoints"


def tokenizer_dir(workdir: str | Path) -> Path:
    return Path(workdir) / "tokenizer"


def has_tokenizer(workdir: str | Path) -> bool:
    return (tokenizer_dir(workdir) / "tokenizer.json").is_file() or \
        (tokenizer_dir(workdir) / "tokenizer_config.json").is_file()


def export_dir(workdir: str | Path) -> Path:
    return Path(workdir) / "export"


def tensorboard_dir(workdir: str | Path) -> Path:
    return Path(workdir) / "tensorboard"
