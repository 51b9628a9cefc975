"""The demo tokenizer: a byte-level BPE trained on the shipped corpus, plus Ling's special tokens
(Ring shares them; `<think>` / `</think>` stay ordinary text).

Flow: corpus.txt -> `train_demo_tokenizer` -> `tokenizers.Tokenizer` -> `write_tokenizer_files`
-> tokenizer.json / tokenizer_config.json / special_tokens_map.json (Hugging Face folder format).
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

# Upstream Ling 2.0 special tokens in upstream id order (the reserved tokens are skipped).
# `<think>` / `</think>` are deliberately absent: upstream tokenizes them as ordinary text.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|startoftext|>",
    "<|endoftext|>",
    "[CLS]",
    "[gMASK]",
    "<|role_end|>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<role>",
    "</role>",
    "<|arithmetic_end|>",
    "<|number_end|>",
    "<|arithmetic_start|>",
    "<|number_start|>",
)
BOS_TOKEN = "<|startoftext|>"
PAD_TOKEN = "<|endoftext|>"
BASE_EOS_TOKEN = "<|endoftext|>"
CHAT_EOS_TOKEN = "<|role_end|>"
RING_EOS_TOKEN = "<|endoftext|>"  # Ring-mini-2.0's tokenizer_config eos_token

_MIN_VOCAB = 256 + 1  # the 256 byte symbols plus at least one merge


def read_package_text(name: str) -> str:
    """Text of a data file shipped inside `bailing.demo` (corpus, chat templates)."""
    return resources.files("bailing.demo").joinpath(name).read_text(encoding="utf-8")


def ling_chat_template() -> str:
    """The Ling 2.0 chat template (Jinja source)."""
    return read_package_text("ling_chat_template.jinja")


def ring_chat_template() -> str:
    """The Ring-mini-2.0 chat template (Jinja source): no turn separators, prompt opens `<think>\\n`."""
    return read_package_text("ring_chat_template.jinja")


def train_demo_tokenizer(vocab_size: int = 2048) -> Tokenizer:
    """Train a GPT-2 style byte-level BPE with `vocab_size` learned tokens, then append the specials.

    The special tokens get ids vocab_size, vocab_size + 1, ... in `SPECIAL_TOKENS` order, as upstream
    appends them after its BPE vocabulary. Training is deterministic (same tokenizer.json every run).
    """
    if not isinstance(vocab_size, int) or vocab_size < _MIN_VOCAB:
        raise ValueError(f"vocab_size must be an int >= {_MIN_VOCAB}, got {vocab_size!r}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tokenizer.train_from_iterator([read_package_text("corpus.txt")], trainer=trainer)
    specials = [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    tokenizer.add_special_tokens(specials)
    return tokenizer


@functools.lru_cache(maxsize=4)
def _demo_tokenizer_json(vocab_size: int) -> str:
    return train_demo_tokenizer(vocab_size).to_str()


def demo_tokenizer(vocab_size: int = 2048) -> Tokenizer:
    """Like `train_demo_tokenizer`, but trained once per process (a fresh object each call)."""
    return Tokenizer.from_str(_demo_tokenizer_json(vocab_size))


def special_token_id(tokenizer: Tokenizer, token: str) -> int:
    """Id of `token` in `tokenizer`; ValueError if the tokenizer lacks it."""
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise ValueError(f"tokenizer has no token {token!r}")
    return token_id


def _added_tokens_decoder(tokenizer: Tokenizer) -> dict[str, dict]:
    """The `added_tokens_decoder` block of tokenizer_config.json, keyed by id as a string."""
    decoder = {}
    for token_id, token in sorted(tokenizer.get_added_tokens_decoder().items()):
        decoder[str(token_id)] = {
            "content": token.content,
            "lstrip": token.lstrip,
            "normalized": token.normalized,
            "rstrip": token.rstrip,
            "single_word": token.single_word,
            "special": token.special,
        }
    return decoder


def write_tokenizer_files(
    out_dir: str | Path,
    tokenizer: Tokenizer,
    chat_template: str,
    *,
    eos_token: str,
    model_max_length: int = 32768,
    extra_special_tokens: tuple[str, ...] = (),
) -> list[Path]:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `out_dir`.

    `eos_token` must be one of the tokenizer's tokens (Ling chat uses `<|role_end|>`, Ring
    `<|endoftext|>`). `extra_special_tokens` (e.g. LLaDA2's `<|mask|>`) must be in the tokenizer
    too; they are listed after the Ling specials.
    Returns the written paths.
    """
    for token in (BOS_TOKEN, PAD_TOKEN, eos_token, *extra_special_tokens):
        special_token_id(tokenizer, token)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    named = {"bos_token": BOS_TOKEN, "eos_token": eos_token, "pad_token": PAD_TOKEN}
    extra = [t for t in (*SPECIAL_TOKENS, *extra_special_tokens) if t not in named.values()]
    config = {
        "add_bos_token": False,
        "add_eos_token": False,
        "additional_special_tokens": extra,
        "added_tokens_decoder": _added_tokens_decoder(tokenizer),
        **named,
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    paths = [out / "tokenizer.json", out / "tokenizer_config.json", out / "special_tokens_map.json"]
    paths[0].write_text(tokenizer.to_str(pretty=True) + "\n", encoding="utf-8")
    write_json(paths[1], config)
    write_json(paths[2], {**named, "additional_special_tokens": extra})
    return paths


def write_json(path: Path, data: dict) -> None:
    """Write `data` as indented UTF-8 JSON (stable bytes: key order is the dict order)."""
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
