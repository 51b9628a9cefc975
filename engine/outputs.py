"""What a request returns (vLLM-shaped, flattened for the single-sample case).

Outputs are cumulative (`token_ids`, `text`) and also carry what is new since the previous output of
the same request (`new_token_ids`, `new_text`), which is what a streaming consumer forwards. A request
with n > 1 samples lists one output per sample in `choices` (index order, each with its own deltas);
its own single-answer fields are sample 0's, and it is finished when every sample is. A prefill-only
request (`add_request(hidden_positions=...)`) generates no token: its one output carries `hidden_states`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the dataclasses themselves stay importable without torch
    import torch


@dataclass
class RequestMetrics:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0  # prompt tokens whose KV came from the prefix cache
    time_to_first_token_s: float = 0.0
    total_time_s: float = 0.0
    inter_token_latencies_s: list[float] = field(default_factory=list)


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None  # "stop" (eos, stop token or string), "length", "abort" or "error"
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it
    logprobs: list[dict[int, float]] | None = None  # per generated token: {sampled id: lp, top-n ids: lp}
    new_token_ids: list[int] = field(default_factory=list)
    new_text: str = ""
    metrics: RequestMetrics = field(default_factory=RequestMetrics)
    index: int = 0  # which sample of the request this is
    choices: list[RequestOutput] | None = None  # every sample, when the request asked for n > 1
    # Model forward passes that produced this sample's tokens: one per token when decoding
    # autoregressively, the NFE of a diffusion request (several tokens per forward).
    num_forwards: int = 0
    # Diffusion only: the absolute positions committed at each forward (for tracing and parity).
    step_commits: list[list[int]] | None = None
    # Prefill-only requests: the model's final hidden rows at the requested prompt positions, (k, d)
    # in the order asked, on the engine's device in the model's dtype; None for every other request.
    hidden_states: torch.Tensor | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
