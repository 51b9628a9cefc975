"""DiffusionParams: one request's block-diffusion decoding settings, validated on construction.

Flows into `make_decoder` (engine/diffusion/decoders.py). Invalid values raise RequestError naming
the field. Token ids may stay None here: the engine fills `mask_token_id` from the tokenizer's
`<|mask|>` (never a constant) and `eos_token_id` from the checkpoint before decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import RequestError

DECODERS = ("llada2", "threshold", "hierarchy", "credit")
MAX_BLOCK_LENGTH = 1024
DEFAULT_LOW_THRESHOLD = 0.4  # dInfer's HierarchyDecoder default


@dataclass(frozen=True)
class DiffusionParams:
    block_length: int = 32  # B: tokens decoded together; attention is causal across blocks
    steps: int = 32  # llada2: schedule length S (capped at gen_length); others ignore it
    threshold: float = 0.95  # τ (hierarchy: τ_high)
    decoder: str = "llada2"  # one of DECODERS
    low_threshold: float | None = None  # hierarchy only: τ_low (None -> min(0.4, threshold))
    eos_early_stop: bool = False  # stop mid-block once EOS is committed and all before it is decoded
    mask_token_id: int | None = None
    eos_token_id: int | None = None
    credit_alpha: float = 0.7  # credit: fused logits ℓ + α·log(1 + C)
    decay_beta: float = 0.8  # credit: C ← β·C after the first step of a block
    boost_gamma: float = 0.2  # credit: boost (p_top1)^γ
    prefix_cache: bool = True  # reuse finished blocks' KV (exact under the block-causal mask)

    def __post_init__(self) -> None:
        _check_int("block_length", self.block_length, 1, MAX_BLOCK_LENGTH)
        _check_int("steps", self.steps, 1, None)
        _check_unit("threshold", self.threshold)
        if self.decoder not in DECODERS:
            raise RequestError(
                f"DiffusionParams.decoder must be one of {list(DECODERS)}, got {self.decoder!r}"
            )
        self._check_low_threshold()
        for flag in ("eos_early_stop", "prefix_cache"):
            if not isinstance(getattr(self, flag), bool):
                raise RequestError(f"DiffusionParams.{flag} must be a bool, got {getattr(self, flag)!r}")
        for name in ("mask_token_id", "eos_token_id"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 0, None)
        _check_number("credit_alpha", self.credit_alpha, 0.0, None)
        _check_number("decay_beta", self.decay_beta, 0.0, 1.0)
        _check_number("boost_gamma", self.boost_gamma, 0.0, None)

    def _check_low_threshold(self) -> None:
        if self.decoder != "hierarchy":
            if self.low_threshold is not None:
                raise RequestError(
                    f"DiffusionParams.low_threshold only applies to decoder 'hierarchy', not {self.decoder!r}"
                )
            return
        if self.low_threshold is None:
            object.__setattr__(self, "low_threshold", min(DEFAULT_LOW_THRESHOLD, self.threshold))
        _check_unit("low_threshold", self.low_threshold)
        if self.low_threshold > self.threshold:  # type: ignore[operator]
            raise RequestError(
                f"DiffusionParams.low_threshold ({self.low_threshold}) must be <= "
                f"threshold ({self.threshold})"
            )


def _check_int(name: str, value: object, low: int, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"DiffusionParams.{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise RequestError(f"DiffusionParams.{name} must be {bounds}, got {value}")


def _check_number(name: str, value: object, low: float, high: float | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise RequestError(f"DiffusionParams.{name} must be a number, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise RequestError(f"DiffusionParams.{name} must be {bounds}, got {value}")


def _check_unit(name: str, value: object) -> None:
    _check_number(name, value, 0.0, 1.0)
