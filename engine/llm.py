"""Offline Python API, the way vLLM users call it: LLM(path).generate / .chat / .logits / .hidden_states.

`LLM(path, tensor_parallel_size=N, expert_parallel=True)` splits the model over N local ranks
(engine.parallel): this process is rank 0; `close()` (or a `with` block) ends the others. With
`group` (this process already rank 0 of a group) the other ranks run `serve_as_follower`.
It owns an LLMEngine and drives it synchronously: all prompts are added, then `step()` runs until
every request is done (continuous batching does the rest). Outputs come back in input order.
`.logits` scores a whole sequence without a cache (for evaluation); `.hidden_states` runs prefill-only
engine requests and returns the model's final hidden rows at the positions asked.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import Any

import torch

from engine.engine import EngineConfig, LLMEngine, Prompt
from engine.errors import RequestError
from engine.multimodal import MediaInputs
from engine.outputs import RequestOutput
from engine.parallel.group import TensorGroup
from engine.sampling_params import SamplingParams
from engine.tokenizer import require


class LLM:
    def __init__(
        self,
        model: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        group: TensorGroup | None = None,
        **engine_config: Any,
    ) -> None:
        self.engine = LLMEngine(model, device, dtype, EngineConfig(**engine_config), group)
        self.path, self.device, self.dtype = self.engine.path, self.engine.device, self.engine.dtype
        self.model, self.tokenizer = self.engine.model, self.engine.tokenizer
        self._batches = itertools.count()

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self.engine.eos_token_ids

    @eos_token_ids.setter
    def eos_token_ids(self, ids: set[int]) -> None:
        self.engine.eos_token_ids = frozenset(ids)

    def generate(
        self,
        prompts: Prompt | Seq[Prompt],
        params: SamplingParams | Seq[SamplingParams] | None = None,
        media: MediaInputs | Seq[MediaInputs | None] | None = None,
    ) -> list[RequestOutput]:
        """Complete each prompt; returns one RequestOutput per prompt, in order.

        `media`: a multimodal model's processor tensors per prompt (one `MediaInputs` for a single
        prompt, or a list with None for text-only prompts); the prompts are then token-id lists with
        the processor's placeholder tokens.
        """
        prompts = _prompt_list(prompts)
        plist = list(params) if isinstance(params, Seq) else [params or SamplingParams()] * len(prompts)
        if len(plist) != len(prompts):
            raise RequestError(f"got {len(prompts)} prompts but {len(plist)} SamplingParams")
        mlist = _media_list(media, len(prompts))
        return self._run(
            [dict(prompt=q, params=p, media=m) for q, p, m in zip(prompts, plist, mlist, strict=True)]
        )

    def hidden_states(
        self,
        prompts: Prompt | Seq[Prompt],
        positions: Seq[int] | Seq[Seq[int]],
        media: MediaInputs | Seq[MediaInputs | None] | None = None,
    ) -> list[torch.Tensor]:
        """The model's final hidden rows (after the final norm) at `positions` of each prompt, in order.

        One prompt takes one list of positions; a list of prompts takes one list per prompt. Each
        result is [k, d] (rows in the order of its positions). `media` as for `generate`. The prompts
        run as prefill-only engine requests, batched (and chunked) like any prompts.
        """
        single = _is_single(prompts)
        prompts = _prompt_list(prompts)
        plist = [positions] if single else list(positions)  # type: ignore[list-item]
        if len(plist) != len(prompts):
            raise RequestError(f"got {len(prompts)} prompts but {len(plist)} position lists")
        mlist = _media_list(media, len(prompts))
        outs = self._run(
            [
                dict(prompt=q, media=m, hidden_positions=p)
                for q, p, m in zip(prompts, plist, mlist, strict=True)
            ]
        )
        for i, out in enumerate(outs):
            if out.hidden_states is None:
                raise RequestError(f"prompt {i} ended with {out.finish_reason}: {out.stop_reason}")
        return [out.hidden_states for out in outs]

    def _run(self, requests: list[dict[str, Any]]) -> list[RequestOutput]:
        """Add every request (`add_request` keywords), step until all are finished; outputs in order."""
        batch = next(self._batches)
        ids = [f"llm-{batch}-{i}" for i in range(len(requests))]
        final: dict[str, RequestOutput] = {}
        try:
            for rid, kwargs in zip(ids, requests, strict=True):
                self.engine.add_request(request_id=rid, **kwargs)
            wanted = set(ids)
            while len(final) < len(ids):
                for out in self.engine.step():  # other callers' requests may finish here too
                    if out.finished and out.request_id in wanted:
                        final[out.request_id] = out
        finally:
            for rid in ids:
                if rid not in final:
                    self.engine.abort(rid)
        return [final[rid] for rid in ids]

    def chat(
        self,
        messages: list[dict[str, Any]] | list[list[dict[str, Any]]],
        params: SamplingParams | Seq[SamplingParams] | None = None,
        *,
        add_generation_prompt: bool = True,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> list[RequestOutput]:
        """Render each conversation with the checkpoint's chat template, then generate."""
        tok = require(self.tokenizer, self.path, "chat")
        convs = [messages] if messages and isinstance(messages[0], dict) else messages
        rendered = [
            tok.apply_chat_template(
                c, tokenize=False, add_generation_prompt=add_generation_prompt, **(chat_template_kwargs or {})
            )
            for c in convs
        ]
        outs = self.generate([self.engine.encode(r) for r in rendered], params)
        for out, text in zip(outs, rendered, strict=True):
            out.prompt = text
        return outs

    @torch.inference_mode()
    def logits(self, token_ids: list[int]) -> torch.Tensor:
        """Full-sequence logits without a cache: [len, vocab] float32."""
        ids = self.engine._check_ids(list(token_ids))
        positions = torch.arange(len(ids), device=self.device)
        # the model's own no-cache attention: causal for an AR model, bidirectional for a diffusion one
        with self.engine._locked():  # over several ranks this is a broadcast step like any other
            return self.engine.runner.score(torch.tensor(ids, device=self.device), positions)

    def close(self) -> None:
        """End the engine (and its other ranks, if the model is split over several)."""
        self.engine.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_single(prompts: Any) -> bool:
    """A str or a list of token ids is one prompt; anything else is a list of prompts."""
    return isinstance(prompts, str) or (
        isinstance(prompts, list) and bool(prompts) and isinstance(prompts[0], int)
    )


def _prompt_list(prompts: Prompt | Seq[Prompt]) -> list[Prompt]:
    return [prompts] if _is_single(prompts) else list(prompts)  # type: ignore[list-item]


def _media_list(media: MediaInputs | Seq[MediaInputs | None] | None, n: int) -> list[MediaInputs | None]:
    mlist = [media] if isinstance(media, MediaInputs) else list(media or [None] * n)
    if len(mlist) != n:
        raise RequestError(f"got {n} prompts but {len(mlist)} media entries")
    return mlist
