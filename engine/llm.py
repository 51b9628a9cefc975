"""Offline Python API, the way vLLM users call it: LLM(path).generate / .chat / .logits.

Flow: prompts (strings, or lists of token ids) -> token ids -> generation loop -> RequestOutput per
prompt, in input order. `.logits` scores a whole sequence without a cache (for evaluation).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import Any

import torch

from engine import generation
from engine.errors import RequestError
from engine.layers.attention import NoCacheContext
from engine.model_loader import generation_config, load_model, resolve_dtype
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams
from engine.tokenizer import load_tokenizer, require

Prompt = str | list[int]


class LLM:
    def __init__(
        self, model: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None
    ) -> None:
        self.path = Path(model)
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = load_model(self.path, self.device, self.dtype)
        self.tokenizer = load_tokenizer(self.path)
        self.eos_token_ids = self._eos_ids()
        self._ids = itertools.count()

    def _eos_ids(self) -> set[int]:
        gen = generation_config(self.path).get("eos_token_id")
        ids = set(self.model.runtime.eos_token_ids)
        ids.update(gen if isinstance(gen, list) else [] if gen is None else [gen])
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return {int(i) for i in ids}

    def generate(
        self, prompts: Prompt | Seq[Prompt], params: SamplingParams | Seq[SamplingParams] | None = None
    ) -> list[RequestOutput]:
        """Complete each prompt; returns one RequestOutput per prompt, in order."""
        if isinstance(prompts, str) or (
            isinstance(prompts, list) and prompts and isinstance(prompts[0], int)
        ):
            prompts = [prompts]  # type: ignore[list-item]
        plist = list(params) if isinstance(params, Seq) else [params or SamplingParams()] * len(prompts)
        if len(plist) != len(prompts):
            raise RequestError(f"got {len(prompts)} prompts but {len(plist)} SamplingParams")
        seqs = [self._sequence(p, sp) for p, sp in zip(prompts, plist, strict=True)]
        generation.run(self.model, seqs, self.device)
        return [s.out for s in seqs]

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
        outs = self.generate([self._encode(r) for r in rendered], params)
        for out, text in zip(outs, rendered, strict=True):
            out.prompt = text
        return outs

    @torch.inference_mode()
    def logits(self, token_ids: list[int]) -> torch.Tensor:
        """Full-sequence logits without a cache: [len, vocab] float32."""
        ids = self._check_ids(token_ids)
        positions = torch.arange(len(ids), device=self.device)
        hidden = self.model(torch.tensor(ids, device=self.device), positions, NoCacheContext())
        return self.model.compute_logits(hidden)

    def _encode(self, text: str) -> list[int]:
        return require(self.tokenizer, self.path, "a text prompt").encode(text, add_special_tokens=False)

    def _check_ids(self, ids: list[int]) -> list[int]:
        rt = self.model.runtime
        if not ids:
            raise RequestError("the prompt is empty")
        bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < rt.vocab_size]
        if bad:
            raise RequestError(f"token ids out of range [0, {rt.vocab_size}): {bad[:5]}")
        if len(ids) >= rt.max_position:
            raise RequestError(f"prompt has {len(ids)} tokens; the model's context is {rt.max_position}")
        return list(ids)

    def _sequence(self, prompt: Prompt, params: SamplingParams) -> generation.Sequence:
        text = prompt if isinstance(prompt, str) else None
        ids = self._check_ids(self._encode(prompt) if isinstance(prompt, str) else list(prompt))
        out = RequestOutput(request_id=str(next(self._ids)), prompt=text, prompt_token_ids=ids)
        out.metrics.prompt_tokens = len(ids)
        return generation.new_sequence(
            self.model, out, params, self.tokenizer, self.eos_token_ids, self.dtype, self.device
        )
