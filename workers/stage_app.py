"""The Celery side of a diffusion-stage worker (`bailing worker --role image-stage`): one task,
`TASK_IMAGE_STAGE`, on `stage_queue_name(model)`, run by a `StageRuntime` (threads pool, one thread per
request it may hold, late acks, prefetch 1 - as the model workers). SIGTERM: requests in flight get
`shutdown_grace_s`, then end UNAVAILABLE."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Celery, Task, signals
from kombu import Queue

from pipelines.protocol import TASK_IMAGE_STAGE, stage_queue_name
from workers.config import WorkerConfig
from workers.stage_runtime import StageRuntime

log = logging.getLogger(__name__)


def make_stage_app(config: WorkerConfig, runtime: StageRuntime) -> Celery:
    queue = stage_queue_name(config.name)
    app = Celery(f"bailing-stage-{config.name}", broker=config.redis_url, set_as_current=False)
    app.conf.update(
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={"visibility_timeout": config.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=queue,
        task_queues=[Queue(queue, routing_key=queue)],
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )

    @app.task(name=TASK_IMAGE_STAGE, bind=True, ignore_result=True)
    def image_stage(self: Task, *args: Any, **kwargs: Any) -> None:
        runtime.run_payload(args[0] if len(args) == 1 and not kwargs else None)

    return app


def run_stage_worker(config: WorkerConfig, loglevel: str = "INFO") -> int:
    """Load the diffusion parts, then take handed-off image requests until a shutdown signal."""
    runtime = StageRuntime(config)  # raises for a checkpoint without image-generation heads
    runtime.start()

    def on_shutdown(sender: str, how: str = "Warm", **_: Any) -> None:
        grace = config.shutdown_grace_s if how == "Warm" else 0.0
        threading.Thread(target=_drain, args=(runtime, grace), name="bailing-drain", daemon=True).start()

    signals.worker_shutting_down.connect(on_shutdown, weak=False)
    try:
        app = make_stage_app(config, runtime)
        worker = app.Worker(
            hostname=config.worker_id, pool="threads", concurrency=config.max_num_seqs,
            queues=[stage_queue_name(config.name)], without_gossip=True, without_mingle=True,
            without_heartbeat=True, loglevel=loglevel, quiet=True,
        )  # fmt: skip
        worker.start()
        return worker.exitcode or 0
    finally:
        signals.worker_shutting_down.disconnect(on_shutdown)
        runtime.close()


def _drain(runtime: StageRuntime, grace: float) -> None:
    time.sleep(grace)
    n = runtime.end_in_flight()
    if n:
        log.warning("shutdown grace period over: ended %d image requests with UNAVAILABLE", n)
