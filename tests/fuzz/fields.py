"""Field values for the fuzzed requests: hypothesis strategies of model names, texts (special tokens,
control characters, huge ones), request ids, integers at their type's edges and non-finite doubles.

`mostly(valid, invalid)` draws from `valid` most of the time: a request is a mix of fields in range and
fields out of it, so most requests fail one check, but enough pass to reach a worker. Values that
would make a valid request expensive (max_tokens, steps, image sizes, text to speak) are drawn cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_EDGES = (INT32_MIN, -1, 0, 1, INT32_MAX)
INT64_EDGES = (INT64_MIN, -1, 0, INT64_MAX)
# text the chat templates and processors give meaning to: media placeholders, turn markers, think tags
SPECIAL = (
    "<IMAGE>",
    "<AUDIO>",
    "<VIDEO>",
    "<image>",
    "<audio>",
    "<think>",
    "</think>",
    "<|endoftext|>",
    "<|im_start|>",
    "<role>HUMAN</role>",
    "<role>ASSISTANT</role>",
    "{{ messages }}",
    "{% raw %}",
    "\x00",
    "\ufeff",
    "\u202e",
)
DUPLICATE_ID = "fuzz-duplicate-id"


@dataclass(frozen=True)
class Target:
    """What the fuzzed stack serves: every model, and which of them take media in, draw, speak."""

    served: tuple[str, ...]
    media: tuple[str, ...]  # accept image / audio / video parts
    image: tuple[str, ...]  # GenerateImage
    speech: tuple[str, ...]  # SynthesizeSpeech and spoken replies
    voices: tuple[str, ...] = ()


def below(n: int) -> st.SearchStrategy[int]:
    """0 <= k < n (n <= 1000), close to uniform: hypothesis draws a wide `integers` range, and a
    `sampled_from`, with a strong lean to its low end; three decimal digits are each near uniform."""
    digits = st.tuples(st.integers(0, 9), st.integers(0, 9), st.integers(0, 9))
    return digits.map(lambda d: (100 * d[0] + 10 * d[1] + d[2]) % n)


def weighted(weights: dict[str, int]) -> st.SearchStrategy[str]:
    """A key of `weights`, each about in proportion to its weight."""
    total = sum(weights.values())

    def pick(k: int) -> str:
        for name, weight in weights.items():
            if k < weight:
                return name
            k -= weight
        raise AssertionError(k)

    return below(total).map(pick)


def mostly(valid: st.SearchStrategy, invalid: st.SearchStrategy, odds: int = 6) -> st.SearchStrategy:
    """`valid` about `odds` times out of `odds` + 1, else `invalid`."""
    return below(odds + 1).flatmap(lambda k: invalid if k == 0 else valid)


def optional(values: st.SearchStrategy) -> st.SearchStrategy:
    """Unset (None: the field is left out of the message) or one of `values`."""
    return st.one_of(st.none(), values)


def huge_text(min_chars: int = 5_000, max_chars: int = 400_000) -> st.SearchStrategy[str]:
    """A long string made by repeating a short one (cheap to draw, costly to process)."""
    pieces, lengths = st.text(min_size=1, max_size=8), st.integers(min_chars, max_chars)
    return st.builds(lambda s, n: (s * (n // len(s) + 1))[:n], pieces, lengths)


def texts(max_size: int = 40) -> st.SearchStrategy[str]:
    """Short text mostly; sometimes special tokens woven in, whitespace only, or (rarely) huge."""
    special = st.lists(st.one_of(st.sampled_from(SPECIAL), st.text(max_size=6)), min_size=1, max_size=6)
    short = st.one_of(
        st.text(min_size=1, max_size=max_size),
        special.map("".join),
        st.sampled_from(("", " ", "\n\t ", "hello", "你好")),
    )
    return mostly(short, huge_text(), odds=15)


def cheap_texts() -> st.SearchStrategy[str]:
    """Text for a worker to process (speech, image prompts): short, else one that fails validation."""
    return mostly(st.text(min_size=1, max_size=24).filter(str.strip), texts())


def model_names(models: tuple[str, ...], target: Target) -> st.SearchStrategy[str]:
    """One of `models` mostly; else another served model, an unknown name, empty or huge."""
    wrong = st.one_of(
        st.sampled_from(target.served),
        st.text(max_size=20),
        st.sampled_from(("", "LING", " ling", "ling\x00", "../ming")),
        huge_text(300, 5000),
    )
    return mostly(st.sampled_from(models), wrong, odds=10)


def request_ids() -> st.SearchStrategy[str]:
    """Empty (the gateway assigns one) mostly; else a valid unique id, an invalid one, or a reused one."""
    valid = st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True).map(lambda s: f"fuzz-{s}")
    invalid = st.one_of(
        st.text(min_size=1, max_size=20).filter(lambda s: not s.isascii() or " " in s),
        st.just("x" * 129),
        st.just(DUPLICATE_ID),
    )
    return mostly(st.just(""), st.one_of(valid, invalid), odds=4)


def int32s(valid: st.SearchStrategy[int]) -> st.SearchStrategy[int]:
    """`valid` mostly; else an int32 at an edge or anywhere."""
    return mostly(valid, st.one_of(st.sampled_from(INT32_EDGES), st.integers(INT32_MIN, INT32_MAX)))


def outside(low: int, high: int) -> st.SearchStrategy[int]:
    """An int32 not in [low, high]: for a field whose valid values must stay cheap (max_tokens, steps)."""
    edges = [v for v in (*INT32_EDGES, low - 1, high + 1) if not low <= v <= high]
    return st.one_of(
        st.sampled_from(edges), st.integers(INT32_MIN, low - 1), st.integers(high + 1, INT32_MAX)
    )


def int64s(valid: st.SearchStrategy[int]) -> st.SearchStrategy[int]:
    return mostly(valid, st.one_of(st.sampled_from(INT64_EDGES), st.integers(INT64_MIN, INT64_MAX)))


def doubles(low: float, high: float) -> st.SearchStrategy[float]:
    """In [low, high] mostly; else NaN, an infinity, an edge just outside, or any double."""
    outside = st.sampled_from((float("nan"), float("inf"), -float("inf"), low - 1e-9, high + 1e-6, -0.0))
    return mostly(st.floats(low, high), st.one_of(outside, st.floats(allow_nan=True, allow_infinity=True)))


def kwargs(**fields) -> dict:
    """The fields that are set (not None), for a protobuf constructor."""
    return {k: v for k, v in fields.items() if v is not None}
