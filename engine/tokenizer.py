"""The checkpoint's own tokenizer (tokenizer.json + tokenizer_config.json with its chat template).

Loaded with transformers' PreTrainedTokenizerFast (a well-kept implementation of exactly this format,
chat templates included). A folder without tokenizer files still serves token-id requests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import CheckpointError, TokenizerError


def load_tokenizer(folder: Path) -> Any | None:
    """The folder's tokenizer, or None when it has no tokenizer.json."""
    if not (folder / "tokenizer.json").is_file():
        return None
    from transformers import PreTrainedTokenizerFast  # lazy: heavy import

    try:
        return PreTrainedTokenizerFast.from_pretrained(str(folder))
    except Exception as exc:  # tokenizers raises its own exception types for a bad file
        raise CheckpointError(f"cannot load the tokenizer in {folder}: {exc}") from None


def require(tokenizer: Any | None, folder: Path, what: str) -> Any:
    if tokenizer is None:
        raise TokenizerError(
            f"{what} needs a tokenizer, but {folder} has no tokenizer.json: pass token ids instead, "
            "or add the model's tokenizer files"
        )
    return tokenizer
