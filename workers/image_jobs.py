"""ImageJobs: one image-generation job in its task thread, from the job to its IMAGE and DONE events.

Flow: `pipelines.image_generation.plan` (prompt + query blocks, settings, reference) -> the thinker
pass(es) on the shared engine as prefill-only requests (`hidden_positions`, in the steps every other
request shares; `isolated`, so the query states - and the image - are the same bits whatever runs
beside them) -> `ImageGenerator.condition` -> a `DenoiseJob` submitted to the process's `ImageStage`
(progress events per step) -> decode + encode here, in the task thread -> the bytes parked in Redis
(`image_key`, TTL) -> IMAGE events, then DONE with the `ImageSummary`.
Ending early: the job registers its own abort with the `Aborter` (an `ExclusiveEnd`): in the thinker
phase it aborts the engine requests, in the diffusion phase the stage drops the job at its next step
(tensors freed). It ends the request exactly once: whichever of abort and completion comes first.
"""

from __future__ import annotations

import logging
import queue
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from engine.errors import RequestError
from engine.sampling_params import SamplingParams
from pipelines import image_generation
from pipelines.image_generation import ImageLimits, ImagePlan, ThinkerPass
from pipelines.protocol import (
    GenerateJob,
)
from workers.emitter import Flight
from workers.image_handoff import HandOff
from workers.image_output import POLL_S, Outlet, finish_images
from workers.image_stage import ImageStage
from workers.job_end import ExclusiveEnd, JobDeadline

if TYPE_CHECKING:
    from models.ming.generation.generator import ImageGenerator
    from workers.config import WorkerConfig
    from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)


def load_images(runtime: WorkerRuntime, config: WorkerConfig) -> ImageJobs | None:
    """The image side of a worker whose checkpoint has generation heads (`mlp/`; else None)."""
    from models.ming.generation.generator import ImageGenerator

    remote = config.image_stage == "remote"
    parts = "condition" if remote else "all"  # remote: no DiT / VAE here
    generator = ImageGenerator.load(config.model_dir, runtime.engine.device, runtime.engine.dtype, parts)
    if generator is None:
        return None
    limits = ImageLimits(config.max_image_steps, config.max_images_per_request)
    return ImageJobs(runtime, generator, limits, remote=remote)


@dataclass(eq=False)
class _Request:
    """One image job in its task thread."""

    job: GenerateJob
    flight: Flight
    plan: ImagePlan
    abort: ExclusiveEnd
    deadline: JobDeadline
    report: bool  # step events (False for batch items: nobody reads their stream while they run)
    t0: float = field(default_factory=time.monotonic)

    @property
    def prompt_tokens(self) -> int:
        plan = self.plan
        return len(plan.positive.ids) + (len(plan.negative.ids) if plan.negative else 0)


class ImageJobs:
    """The image side of a worker whose checkpoint has generation heads: a local image stage, or
    (`remote`) the thinker half only, handing each request to a diffusion-stage worker."""

    def __init__(
        self, runtime: WorkerRuntime, generator: ImageGenerator, limits: ImageLimits, remote: bool = False
    ) -> None:
        self.runtime, self.generator, self.limits = runtime, generator, limits
        self.stage = None if remote else ImageStage(generator, runtime.metrics.image_forward)
        self.handoff = HandOff(runtime) if remote else None

    def start(self) -> None:
        if self.stage is not None:
            self.stage.start()

    def stop(self) -> None:
        if self.stage is not None:
            self.stage.stop()
        if self.handoff is not None:
            self.handoff.close()

    def in_flight(self) -> int:
        """Requests in this process's denoising loop now."""
        return 0 if self.stage is None else len(self.stage)

    def run(self, job: GenerateJob, flight: Flight, progress: bool = True) -> None:
        """Serve one image job (task thread); RequestError for a client mistake (the caller reports it).

        `progress` False (batch items: nobody reads their stream while they run) skips the step events.
        """
        rt = self.runtime
        if rt.media is None:
            raise RequestError(f"model '{job.model}' does not generate images")
        image_plan = image_generation.plan(job, rt.media, self.generator, self.limits)
        thinker_ids = [job.request_id, _negative_id(job)]  # aborted in the thinker phase; later no-ops
        abort = ExclusiveEnd(lambda: [rt.engine.abort(rid) for rid in thinker_ids])
        rt.aborter.register(job.request_id, abort)
        try:
            with flight.lock:
                if flight.stopping:
                    return
                flight.added = True  # from here on, ending it early goes through `abort`
            flight.prompt_tokens = len(image_plan.positive.ids)
            req = _Request(job, flight, image_plan, abort, JobDeadline(rt, job, flight), progress)
            self._generate(req)
        finally:
            rt.aborter.unregister(job.request_id)

    # ---- phases ------------------------------------------------------------------------------
    def _generate(self, req: _Request) -> None:
        job, plan = req.job, req.plan
        passes = [(job.request_id, plan.positive)]
        if plan.negative is not None:
            passes.append((_negative_id(job), plan.negative))
        states = self._thinker(job, passes, req.abort, req.deadline)
        if states is None:
            return  # aborted: the Aborter queued the terminal event
        gen, s = self.generator, plan.settings
        condition = gen.condition(states[0])
        negative = gen.condition(states[1]) if len(states) > 1 else None
        condition, negative = gen.add_glyph(condition, negative, plan.glyph_text)  # quoted text, if any
        if self.handoff is not None:
            self.handoff.send(req, condition, negative)
            return
        djob = gen.new_job(
            condition, height=s.height, width=s.width, seeds=s.seeds, steps=s.steps, guidance=s.guidance,
            image_guidance=s.image_guidance, negative=negative, reference=plan.reference,
        )  # fmt: skip
        outlet = Outlet(job.request_id, self.runtime.redis, self.runtime.emitter)
        abort = req.abort
        published = finish_images(
            gen, self.stage, djob, s, outlet, stopped=lambda: abort.cancelled, complete=abort.complete,
            waiting=req.deadline.check, report=req.report, prompt_tokens=req.prompt_tokens,
        )  # fmt: skip
        if published:
            self.runtime.metrics.images_done(s.num_images, s.width, s.height, time.monotonic() - req.t0)

    def _thinker(
        self,
        job: GenerateJob,
        passes: list[tuple[str, ThinkerPass]],
        abort: ExclusiveEnd,
        deadline: JobDeadline,
    ):
        """The passes' last-scale query states [Q, H] each, or None when the job was aborted."""
        engine, outputs = self.runtime.engine, queue.SimpleQueue()
        try:
            for rid, p in passes:  # encoders run here, outside the engine lock
                encoded = engine.encode_media(p.ids, p.media)
                if abort.cancelled:
                    return None
                engine.add_request(
                    p.ids, SamplingParams(max_tokens=1), request_id=rid, priority=job.priority,
                    output_queue=outputs, media=encoded, hidden_positions=p.positions, isolated=True,
                )  # fmt: skip
                self.runtime.metrics.prompt_tokens.inc(len(p.ids))
            rows: dict[str, torch.Tensor] = {}
            while len(rows) < len(passes):
                try:
                    out = outputs.get(timeout=POLL_S)
                except queue.Empty:
                    deadline.check()
                    continue
                if out.finish_reason == "abort":
                    return None
                if out.hidden_states is None:
                    raise RuntimeError(f"the thinker pass {out.request_id} failed: {out.stop_reason}")
                rows[out.request_id] = out.hidden_states
            return [rows[rid] for rid, _ in passes]
        finally:
            for rid, _ in passes:  # no-ops for finished passes; frees the others' KV
                engine.abort(rid)


def _negative_id(job: GenerateJob) -> str:
    return f"{job.request_id}:negative"
