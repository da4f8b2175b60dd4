"""Loading and saving Hugging Face tokenizers from local directories only."""

from __future__ import annotations

import json
from pathlib import Path

import transformers

# Any of these marks a directory as holding a Hugging Face tokenizer.
TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "tokenizer.model",
)


def load_tokenizer(path: str | Path) -> transformers.PreTrainedTokenizerBase:
    """Load the tokenizer (with its chat template) stored in a local directory.

    Never touches the network. Raises FileNotFoundError when the directory or its
    tokenizer files are missing and ValueError when the files do not load or carry no
    chat template (the agent cannot render a conversation without one).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory does not exist: {path}")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"no tokenizer files in {path} (expected one of {', '.join(TOKENIZER_FILES)})"
        )
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"could not load the tokenizer in {path}: {e}") from e
    if not tokenizer.chat_template:
        raise ValueError(
            f"the tokenizer in {path} has no chat template (no chat_template in "
            "tokenizer_config.json and no chat_template.jinja); add one, e.g. "
            "dagger_jax.tokenizer.CHATML_TEMPLATE"
        )
    return tokenizer


def save_tokenizer(tokenizer: transformers.PreTrainedTokenizerBase, out_dir: str | Path) -> Path:
    """Write a tokenizer's files into out_dir (e.g. next to a model export); returns out_dir.

    The chat template goes into tokenizer_config.json and a special_tokens_map.json is
    written too, so that older transformers (as an SGLang fleet may run) load the
    export as well as transformers 5 does.
    """
    if not tokenizer.chat_template:
        raise ValueError(
            f"refusing to save a tokenizer without a chat template to {out_dir}: "
            "the exported model could not be served for chat"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # transformers 5 would otherwise write chat_template.jinja, which older
    # transformers versions do not read.
    tokenizer.save_pretrained(str(out_dir), save_jinja_files=False)
    _write_legacy_files(tokenizer, out_dir)
    return out_dir


def _write_legacy_files(tokenizer: transformers.PreTrainedTokenizerBase, out_dir: Path) -> None:
    """Add the pieces of the pre-v5 tokenizer layout that transformers 5 no longer writes."""
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    # "TokenizersBackend" is a transformers 5 name; both v4 and v5 know this alias.
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_path.write_text(
            json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
            encoding="utf-8",
        )
    special = {
        key: value if isinstance(value, (str, list)) else str(value)
        for key, value in tokenizer.special_tokens_map.items()
    }
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps(special, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
    )
