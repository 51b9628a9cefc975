"""Per-token bookkeeping after sampling: append, detokenize, check stops, and emit RequestOutputs.

A sampled token first ends the request if it is a stop token id or (unless ignore_eos) an eos id
(stop/eos tokens add no text); otherwise its text is detokenized incrementally and stop strings are
searched across token boundaries (the text is cut before the stop string); then max_tokens and the
context length end it with "length". Streamed text (`new_text`) holds back a tail that could still
grow into a stop string, so the concatenated deltas always equal the final text. Emitted outputs are
snapshots: consumers on other threads never see a list that is still growing.
"""

from __future__ import annotations

import copy
import logging
import time

import torch

from engine.detokenizer import find_stop
from engine.outputs import RequestOutput
from engine.sequence import RequestGroup, TrackedRequest

log = logging.getLogger(__name__)


def apply_logits_processors(
    reqs: list[TrackedRequest], logits: torch.Tensor
) -> tuple[torch.Tensor, dict[int, str]]:
    """logits [S, V] -> (S, V) after each row's request-level processors, and the rows that failed.

    Returns `logits` itself when no row has processors (otherwise a copy: the raw logits stay for
    logprobs). A processor that raises fails only its own request: {row: message}.
    """
    rows = [i for i, r in enumerate(reqs) if r.seq.params.logits_processors]
    if not rows:
        return logits, {}
    work, failed = logits.clone(), {}
    for i in rows:
        seq = reqs[i].seq
        try:
            row = work[i]
            for proc in seq.params.logits_processors:
                row = proc(seq.output_token_ids, row)
            work[i] = row
        except Exception as exc:
            log.exception("request %s: a logits processor failed", seq.request_id)
            failed[i] = f"logits processor failed: {type(exc).__name__}: {exc}"
    return work, failed


def process_token(req: TrackedRequest, token: int, logprobs: dict[int, float] | None, max_len: int) -> None:
    """Apply one sampled token to `req` (its sequence already holds the token)."""
    seq, out, p = req.seq, req.output, req.seq.params
    now = time.monotonic()
    if req.last_token_time is None:
        out.metrics.time_to_first_token_s = now - seq.arrival_time
        out.metrics.cached_prompt_tokens = min(seq.num_cached, len(seq.prompt_token_ids))
    else:
        out.metrics.inter_token_latencies_s.append(now - req.last_token_time)
    req.last_token_time = now
    out.token_ids.append(token)
    out.new_token_ids.append(token)
    if logprobs is not None:
        out.logprobs = [*(out.logprobs or []), logprobs]
    n = len(out.token_ids)
    if n > p.min_tokens and (token in p.stop_token_ids or (not p.ignore_eos and token in req.eos)):
        out.finish_reason, out.stop_reason = "stop", token
    elif req.detok is not None:
        _append_text(req, token, check_stops=n > p.min_tokens)
    if out.finish_reason is None and (n >= p.max_tokens or seq.num_tokens >= max_len):
        out.finish_reason = "length"
    if out.finish_reason is not None:
        out.metrics.completion_tokens = n
        out.metrics.total_time_s = now - seq.arrival_time


def _append_text(req: TrackedRequest, token: int, check_stops: bool) -> None:
    delta = req.detok.push(token)
    if not delta:
        return
    out = req.output
    out.text += delta
    if check_stops and req.stops:
        hit = find_stop(out.text, len(delta), req.stops)
        if hit is not None:
            out.text = out.text[: hit[0]]
            out.finish_reason, out.stop_reason = "stop", hit[1]
    held = _stop_prefix_len(out.text, req.emitted_chars, req.stops)
    _release(req, len(out.text) - held)


def _stop_prefix_len(text: str, start: int, stops: list[str]) -> int:
    """Length of the longest tail of text[start:] that is a proper prefix of a stop string."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text) - start), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best


def _release(req: TrackedRequest, upto: int) -> None:
    """Move output.text[emitted:upto] into new_text."""
    if upto > req.emitted_chars:
        req.output.new_text += req.output.text[req.emitted_chars : upto]
        req.emitted_chars = upto


def group_snapshot(group: RequestGroup) -> RequestOutput:
    """The request's output: its one sample's, or sample 0's with every sample in `choices`."""
    if len(group.members) == 1:
        return snapshot(group.members[0])
    choices = [snapshot(m) for m in group.members]
    top = copy.copy(choices[0])
    top.choices = choices
    if not group.finished:
        top.finish_reason = top.stop_reason = None
    return top


def snapshot(req: TrackedRequest) -> RequestOutput:
    """A copy of the request's output to hand out; resets the per-emission deltas."""
    out = req.output
    if out.finished:  # nothing can grow into a stop string any more
        _release(req, len(out.text))
    snap = copy.copy(out)
    snap.token_ids, snap.new_token_ids = list(out.token_ids), list(out.new_token_ids)
    snap.logprobs = None if out.logprobs is None else list(out.logprobs)
    snap.metrics = copy.copy(out.metrics)
    snap.metrics.inter_token_latencies_s = list(out.metrics.inter_token_latencies_s)
    out.new_token_ids, out.new_text = [], ""
    return snap
