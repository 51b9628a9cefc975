"""LLMEngine: continuous batching over a paged KV cache, driven by `step()` or by its own loop thread.

Data flow of one step (`EngineCore`-style, three lines): scheduler.schedule() -> runner.execute()
-> logits processors + sample + per-token bookkeeping (stops, detokenize) -> outputs. Requests
enter with `add_request` and leave when finished or on `abort` (their KV blocks are freed at once);
a request with n samples is a group whose samples fork from sample 0's prefill (`engine.groups`); a
prefill-only request (`hidden_positions`) ends with its hidden rows once its prompt is computed
(`engine.hidden_states`).
Thread safety: every public method takes the engine lock; a step holds it from schedule to outputs,
so `abort` returns after the blocks are free. `start()` runs steps on a background thread; `stream()` yields a
request's outputs as they are produced and aborts it if the consumer stops early.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from collections.abc import Sequence as SequenceOf
from pathlib import Path
from typing import Any, Protocol

import torch

from engine.admission import check_fits, check_ids, diffusion_params
from engine.block_manager import BlockManager
from engine.decode_graph import DecodeGraph
from engine.diffusion.run import start_diffusion
from engine.engine_config import EngineConfig
from engine.engine_ranks import RankGroupOwner
from engine.engine_thread import EngineThread
from engine.errors import RequestError
from engine.groups import fork_samples, new_group
from engine.hidden_states import check_hidden_request
from engine.metrics import EngineMetrics
from engine.model_loader import generation_config, load_model, resolve_dtype
from engine.model_runner import ModelRunner
from engine.multimodal import MediaInputs, MediaState
from engine.output_processor import group_snapshot
from engine.outputs import RequestOutput
from engine.parallel.group import TensorGroup
from engine.parallel.placement import GroupPlacement
from engine.passing_thread import in_passing_thread
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler, SchedulerConfig
from engine.sequence import RequestGroup, TrackedRequest, sample_id
from engine.side_loops import SideLoops
from engine.step_outputs import StepOutputs
from engine.structured.structured_output import LazyStructuredOutput
from engine.tokenizer import load_tokenizer, require

Prompt = str | list[int]
log = logging.getLogger(__name__)


class OutputQueue(Protocol):
    def put(self, item: RequestOutput) -> None: ...


class LLMEngine(EngineThread, RankGroupOwner, StepOutputs):
    def __init__(
        self,
        model: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        config: EngineConfig | None = None,
        group: TensorGroup | None = None,
        placement: GroupPlacement | None = None,
        on_group_failure: Callable[[str], None] | None = None,
    ) -> None:
        """`group`: this process as rank 0 of a tensor/expert-parallel group whose other ranks the
        caller runs (`engine.parallel.followers.serve_as_follower`). Without it and with
        `config.tensor_parallel_size` > 1 the engine starts this machine's other ranks itself, where
        `placement` (default: every rank on this machine) puts them. `on_group_failure(why)` is called
        (from any thread) when the group breaks; None: fail every request and refuse new ones."""
        self.path, self.config = Path(model), config or EngineConfig()
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, self.device, self.config.quantization)
        self.group = self._join_group(group, placement, on_group_failure)
        try:
            self.model = in_passing_thread(  # see engine.passing_thread: keeps the step fast
                load_model, self.path, self.device, self.dtype, self.group, self.config.quantization
            )
        except BaseException:
            self._end_ranks()
            raise
        self.tokenizer = load_tokenizer(self.path)
        self.eos_token_ids = self._eos_ids()
        rt = self.model.runtime
        self.max_model_len = min(self.config.max_model_len or rt.max_position, rt.max_position)
        cache = in_passing_thread(
            self.config.kv_spec.allocate, rt, self.dtype, self.device, self.group.agree_min
        )
        # A diffusion model's KV depends on its block length and on still-masked tokens: no prefix cache.
        caching = self.config.enable_prefix_caching and not self.model.diffusion
        self.blocks = BlockManager(cache.num_blocks, self.config.block_size, caching)
        graph = DecodeGraph.start(self.model, self.device, self.dtype, self.group.size, self.config)
        self.runner = ModelRunner(self.model, cache, self.blocks, self.device, self.group, graph)
        self.scheduler = Scheduler(
            SchedulerConfig(
                self.config.max_num_seqs,
                self.config.max_num_batched_tokens,
                self.config.background_priority,
                self.config.background_prefill_tokens,
            ),
            self.blocks,
        )
        self.metrics = EngineMetrics()
        # grammars for structured output over this tokenizer, made on first use
        self.structured = LazyStructuredOutput(self.tokenizer, rt.vocab_size, self.eos_token_ids)
        self._requests: dict[str, RequestGroup] = {}  # by request id
        self._seqs: dict[str, TrackedRequest] = {}  # every sample in flight, by seq_id
        self._ids = itertools.count()
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._gate = threading.Condition(threading.Lock())  # counts callers queued for _lock
        self._queued = 0
        self._thread: threading.Thread | None = None
        self._stop = False
        self.side_loops = SideLoops()  # other per-step work run on this engine's thread
        # One request's encoders at a time: concurrent ones only split the same cores / device, so
        # each finishes later (first images wait for the last), and they crowd the loop's steps.
        self._encoding = threading.Lock()
        self._watch_ranks()

    # ---- setup -------------------------------------------------------------------------------
    def wait_compiled(self, timeout: float | None = None) -> bool:
        """Block until the compiled decode graph is ready (True at once if there is none); False on
        timeout or if compiling failed (decode then stays eager)."""
        graph = self.runner.decode_graph
        return graph is None or (graph.ready.wait(timeout) and not graph.failed)

    def _eos_ids(self) -> frozenset[int]:
        gen = generation_config(self.path).get("eos_token_id")
        ids = set(self.model.runtime.eos_token_ids)
        ids.update(gen if isinstance(gen, list) else [] if gen is None else [gen])
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return frozenset(int(i) for i in ids)

    # ---- requests ----------------------------------------------------------------------------
    def encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return require(self.tokenizer, self.path, "a text prompt").encode(
                prompt, add_special_tokens=False
            )
        return list(prompt)

    def add_request(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        priority: int = 0,
        *,
        stream: bool = False,
        output_queue: OutputQueue | None = None,
        final_only: bool = False,
        media: MediaInputs | MediaState | None = None,
        hidden_positions: SequenceOf[int] | None = None,
        isolated: bool = False,
    ) -> str:
        """Queue a request; returns its id. Raises RequestError for an invalid prompt or a duplicate id.

        `media` (a multimodal model's processor tensors for this prompt) is encoded here, in the
        caller's thread, before the request enters the engine: the loop never waits for an encoder.

        `hidden_positions` makes the request prefill-only: its prompt is computed (batched and chunked
        like any prompt), nothing is sampled, and its final output carries `hidden_states`, the
        model's final hidden rows at those prompt positions [k, d], finish_reason "stop". `isolated`
        makes those rows reproducible bit for bit: the prompt is computed in forwards of its own, in
        fixed chunks, without prefix-cache reuse (it still shares the steps: nobody waits for it).

        With `output_queue`, every output of the request (the final one included, also after an
        abort or a failed step) is `put` there from the engine thread; several requests may share
        one queue, which is how a server drains all of them with one consumer. `final_only` sends only
        the final output (for a consumer nobody streams to, e.g. a batch item): no snapshot per step.
        """
        queue_ = output_queue if output_queue is not None else (queue.SimpleQueue() if stream else None)
        if isolated and hidden_positions is None:
            raise RequestError("isolated applies to prefill-only requests (hidden_positions)")
        group = self._add(
            prompt, params, request_id, priority, queue_, final_only, media, hidden_positions, isolated
        )
        return group.request_id

    @contextlib.contextmanager
    def holding_steps(self) -> Iterator[None]:
        """No step starts while the block runs: requests added in it all enter the same next step.

        For a caller that submits a batch one request at a time while the loop runs; without it
        the loop may start a step after the first request and admit the rest one step at a time.
        """
        with self._locked():
            yield

    def _add(
        self,
        prompt: Prompt,
        params: SamplingParams | None,
        request_id: str | None,
        priority: int,
        output_queue: OutputQueue | None,
        final_only: bool = False,
        media: MediaInputs | MediaState | None = None,
        hidden_positions: SequenceOf[int] | None = None,
        isolated: bool = False,
    ) -> RequestGroup:
        if self._broken is not None:
            raise RequestError(
                f"the model's rank group failed ({self._broken}); this engine takes no requests"
            )
        params = params or SamplingParams()
        ids = self._check_ids(self.encode(prompt))
        hidden = None
        if hidden_positions is not None:
            hidden = check_hidden_request(hidden_positions, len(ids), params, self.model.diffusion)
        diffusion = diffusion_params(self.model, self.tokenizer, params)
        check_fits(ids, params, self.blocks, self.max_model_len, diffusion, prefill_only=hidden is not None)
        encoded = media if media is None or isinstance(media, MediaState) else self.encode_media(ids, media)
        if params.n > self.config.max_num_seqs:
            raise RequestError(
                f"n={params.n} samples cannot run at once: the engine runs at most "
                f"max_num_seqs={self.config.max_num_seqs} sequences"
            )
        with self._locked():
            rid = str(next(self._ids)) if request_id is None else request_id
            seq_ids = [sample_id(rid, i) for i in range(params.n)]
            if rid in self._requests or any(s in self._seqs for s in seq_ids):
                raise RequestError(f"request id {rid!r} is already in use")
            group = new_group(
                rid, prompt, ids, params, priority, output_queue, self.tokenizer, self._eos_and_stops()
            )
            group.final_only = final_only
            for member in group.members:  # every sample: one that cannot fork prefills on its own
                member.seq.media = encoded
            group.members[0].seq.hidden = hidden  # n == 1 for a prefill-only request
            group.members[0].seq.isolated = isolated
            if diffusion is not None:
                start_diffusion(group.members[0], diffusion)
            self._requests[rid] = group
            for member in group.members:
                self._seqs[member.seq.seq_id] = member
            self.scheduler.add(group.members[0].seq)
            self._wake.notify_all()
        return group

    def encode_media(self, ids: list[int], media: MediaInputs) -> MediaState:
        """Run the model's encoders for one prompt (no engine lock held); RequestError if unusable.

        `add_request(media=...)` calls it; a caller that holds a lock of its own while adding the
        request calls it first and passes the result, so the encoders run outside that lock too.
        """
        prepare = getattr(self.model, "prepare_prompt", None)
        if prepare is None:
            raise RequestError(f"model {self.path.name!r} takes text only: it cannot take media inputs")
        if self.model.diffusion:
            raise RequestError("a diffusion model takes no media inputs")

        def encode() -> Any:
            with torch.inference_mode():
                return prepare(torch.tensor(ids, device=self.device), **dict(media.tensors))

        try:
            with self._encoding:  # on a passing thread: see engine.passing_thread
                prompt = in_passing_thread(encode, name="bailing-encode")
        except (ValueError, TypeError) as exc:  # the inputs do not fit the prompt or the model
            raise RequestError(f"media inputs: {exc}") from None
        return MediaState.of(prompt, media.content_digest())

    def _eos_and_stops(self) -> tuple[frozenset[int], tuple[str, ...]]:
        return self.eos_token_ids, tuple(self.model.default_stop_strings)

    def _check_ids(self, ids: list[int]) -> list[int]:
        return check_ids(ids, self.model.runtime.vocab_size, self.max_model_len)

    def abort(self, request_id: str) -> bool:
        """Stop a request (all its samples) now and free its KV blocks; False if unknown or finished."""
        with self._locked():
            return self._end_group(request_id, "abort", None)

    def _end_group(self, request_id: str, reason: str, message: str | None) -> bool:
        """End every unfinished sample of the request with `reason`; its queue gets the final output."""
        group = self._requests.pop(request_id, None)
        if group is None:
            return False
        for member in group.members:
            self._seqs.pop(member.seq.seq_id, None)
            if not member.output.finished:
                self.scheduler.finish(member.seq)
                member.output.finish_reason = reason
                if message is not None:
                    member.output.stop_reason = message
        group.num_finished = len(group.members)
        if group.queue is not None:
            group.queue.put(group_snapshot(group))
        return True

    def close(self) -> None:
        """End the engine (see RankGroupOwner.close) and the structured-output mask thread, if any."""
        super().close()
        self.structured.close()

    def has_unfinished(self) -> bool:
        with self._locked():
            return self.scheduler.has_work()

    # ---- the step ----------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Schedule, execute and sample once; returns the outputs of requests that progressed."""
        with self._lock:
            t0 = time.monotonic()
            sched = self.scheduler.schedule()
            if not sched.scheduled:
                return []
            seqs, logits = self.runner.execute(sched.scheduled)
            for seq, n in sched.scheduled:
                seq.num_computed += n
                if seq.diffusion is None:
                    self.blocks.commit(seq.seq_id, seq.block_tokens, seq.num_computed)
            outputs = self._finish_prefill_only(sched.scheduled)
            ar, ar_rows, diffusing, row = [], [], [], 0
            for seq in seqs:  # logits rows: one per autoregressive sequence, a block per diffusion one
                if seq.diffusion is None:
                    ar.append(seq)
                    ar_rows.append(row)
                    row += 1
                else:
                    width = seq.diffusion.params.block_length
                    diffusing.append((seq, logits[row : row + width]))
                    row += width
            if ar and len(ar) < len(seqs):
                logits = logits[torch.tensor(ar_rows, device=logits.device)]
            if ar:
                outputs += self._sample(ar, logits)
            if diffusing:
                outputs += self._diffuse(diffusing)
            self.metrics.record_step(sched, len(seqs), time.monotonic() - t0, self.scheduler, self.blocks)
            return outputs

    def _fork(self, parent: TrackedRequest) -> list[TrackedRequest]:
        forked = fork_samples(parent, self.blocks, self.scheduler, self.runner)
        self.metrics.forked_samples += len(forked)
        return forked

    def _finish(self, req: TrackedRequest) -> None:
        self.scheduler.finish(req.seq)
        del self._seqs[req.seq.seq_id]
        group = req.group
        group.num_finished += 1
        if group.finished:
            del self._requests[group.request_id]
            self.metrics.record_finished([m.output for m in group.members])

    # ---- streaming ----------------------------------------------------------------------------
    def fail_all(self, message: str) -> None:
        """End every request in flight with finish_reason "error" (streams get their final output)."""
        with self._locked():
            for rid in list(self._requests):
                self._end_group(rid, "error", message)

    def stream(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        priority: int = 0,
    ) -> Iterator[RequestOutput]:
        """Yield the request's outputs as they come (needs `start()`); closing the iterator aborts it."""
        if self._thread is None:
            raise RuntimeError("stream() needs the engine loop: call start() first")
        group = self._add(prompt, params, request_id, priority, queue.SimpleQueue())
        rid, q = group.request_id, group.queue
        finished = False
        try:
            while not finished:
                out = q.get()
                finished = out.finished
                yield out
        finally:
            if not finished:
                self.abort(rid)
