"""What a step's model outputs do to its requests: sample the autoregressive rows, run the diffusion
decoders on their blocks, end the prefill-only requests, and publish each progressed request's
snapshot (to its stream queue, and as the step's return value). Mixed into LLMEngine, whose lock the
step holds throughout.
"""

from __future__ import annotations

import logging

import torch

from engine.diffusion.run import diffuse_step
from engine.hidden_states import finish_hidden
from engine.output_processor import apply_logits_processors, group_snapshot, process_token
from engine.outputs import RequestOutput
from engine.sampler import sample
from engine.sequence import RequestGroup, Sequence, TrackedRequest
from engine.structured.constraint import FAILED, GrammarConstraint
from engine.structured.structured_output import LazyStructuredOutput

log = logging.getLogger("engine.engine")


def publish(group: RequestGroup) -> RequestOutput:
    """The group's snapshot, also put on its stream queue if it has one."""
    snap = group_snapshot(group)
    if group.queue is not None:
        group.queue.put(snap)
    return snap


def _advance(req: TrackedRequest, constraint: GrammarConstraint) -> None:
    """The sampled token moves the sample's grammar on; a token it rejects fails the sample."""
    constraint.advance(req.seq.output_token_ids)
    if constraint.error is not None:
        log.warning("request %s: %s", req.seq.request_id, constraint.error)
        req.output.finish_reason, req.output.stop_reason = "error", FAILED + constraint.error


class StepOutputs:
    _seqs: dict[str, TrackedRequest]
    max_model_len: int
    structured: LazyStructuredOutput

    def _finish(self, req: TrackedRequest) -> None:
        raise NotImplementedError

    def _fork(self, parent: TrackedRequest) -> list[TrackedRequest]:
        raise NotImplementedError

    def _finish_prefill_only(self, scheduled: list[tuple[Sequence, int]]) -> list[RequestOutput]:
        """End the prefill-only requests whose prompt this step completed (their rows are in)."""
        outputs = []
        for seq, _ in scheduled:
            if seq.hidden is None or seq.num_uncomputed:
                continue
            req = self._seqs[seq.seq_id]
            finish_hidden(req)
            self._finish(req)
            outputs.append(publish(req.group))
        return outputs

    def _diffuse(self, items: list[tuple[Sequence, torch.Tensor]]) -> list[RequestOutput]:
        """Diffusion sequences: each decoder commits from its block's logits [B, V]."""
        outputs = []
        for seq, block_logits in items:
            req = self._seqs[seq.seq_id]
            try:
                progressed = diffuse_step(req, block_logits)
            except Exception as exc:  # a failing request must not end the others in the step
                log.exception("request %s: diffusion step failed", seq.request_id)
                req.output.finish_reason, req.output.stop_reason = "error", f"{type(exc).__name__}: {exc}"
                progressed = True
            if req.output.finished:
                self._finish(req)
            group = req.group
            if progressed and not (group.final_only and not group.finished):
                outputs.append(publish(group))
        return outputs

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> list[RequestOutput]:
        reqs, rows = [], []
        for row, seq in enumerate(seqs):
            reqs.append(self._seqs[seq.seq_id])
            rows.append(row)
            if seq.pending_forks:  # its prompt is computed: the other samples start from here
                forked = self._fork(reqs[-1])
                reqs += forked
                rows += [row] * len(forked)
        if len(rows) != len(seqs):
            logits = logits[torch.tensor(rows, device=logits.device)]  # (S', V)
        processed, failed = apply_logits_processors(reqs, logits)
        constraints = [r.seq.params.constraint for r in reqs]
        constrained = any(c is not None for c in constraints)
        if constrained:
            processed = self.structured.get().masks.apply(processed, constraints)
        result = sample(processed, [r.sampling for r in reqs], raw_logits=logits)
        progressed: dict[str, RequestGroup] = {}
        for i, (req, token, lps) in enumerate(zip(reqs, result.token_ids, result.logprobs, strict=True)):
            if i in failed:
                req.output.finish_reason, req.output.stop_reason = "error", failed[i]
            else:
                req.seq.append(token)
                process_token(req, token, lps, self.max_model_len)
                req.output.num_forwards += 1
                if constraints[i] is not None and not req.output.finished:
                    _advance(req, constraints[i])
            if req.output.finished:
                self._finish(req)
            progressed[req.group.request_id] = req.group
        if constrained:  # the next masks are computed while the next forward runs
            live = [
                c for r, c in zip(reqs, constraints, strict=True) if c is not None and not r.output.finished
            ]
            self.structured.get().masks.prefetch(live)
        return [publish(g) for g in progressed.values() if g.finished or not g.final_only]
