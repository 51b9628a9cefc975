"""The Celery app of a worker process, and `run_worker`, which serves one model until shut down.

Flow: `run_worker(config)` loads this process's `WorkerRuntime` first (a bad checkpoint fails here,
before Celery starts), then runs a Celery worker in-process: threads pool with one thread per engine
slot, the model's interactive queue and then its batch queue (`worker_queues`: kombu's "priority"
queue order makes every BRPOP take an interactive job before a batch item), late acks, prefetch 1.
SIGTERM is Celery's warm shutdown: no new jobs are taken, the jobs in flight get `shutdown_grace_s`
to finish (then they end with UNAVAILABLE), every job is acknowledged after its terminal event, and
only then does the runtime stop (registry entry removed, engine stopped). SIGQUIT (cold) ends the
jobs in flight at once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from celery import Celery, signals
from kombu import Queue

from pipelines.protocol import IMAGE_STAGE, queue_name
from workers.batch_feeder import BatchFeeder
from workers.config import WorkerConfig
from workers.process_runtime import close_runtime, get_runtime
from workers.runtime import WorkerRuntime
from workers.tasks import register_tasks

log = logging.getLogger(__name__)


def worker_queues(config: WorkerConfig) -> list[str]:
    """The queues Celery consumes: interactive jobs only. Batch items are pulled from
    `batch_queue_name(name)` by the `BatchFeeder`, one per free batch slot."""
    return [queue_name(config.name)]


def make_app(config: WorkerConfig) -> Celery:
    """A Celery app bound to `config.redis_url`, consuming `worker_queues(config)`; no result backend."""
    app = Celery(f"bailing-worker-{config.name}", broker=config.redis_url, set_as_current=False)
    queues = worker_queues(config)
    app.conf.update(
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,  # ack after the job's terminal event is written: a killed worker loses nothing
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "visibility_timeout": config.visibility_timeout_s,
            # look for overdue unacked jobs (a killed worker's) every few seconds: kombu's default
            # scans only every 10 x 10 s, which added up to 100 s to every redelivery
            "unacked_restore_interval": max(1, min(10, config.visibility_timeout_s // 2)),
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_accept_content=["json"],
        task_default_queue=queues[0],
        task_queues=[Queue(q, routing_key=q) for q in queues],
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    register_tasks(app, config)
    return app


def run_worker(config: WorkerConfig, loglevel: str = "INFO") -> int:
    """Load the engine, then consume jobs until a shutdown signal; returns the exit code.

    A worker of role "image-stage" is a diffusion stage only (`workers.stage_app`).
    """
    if config.role == IMAGE_STAGE:
        from workers.stage_app import run_stage_worker

        return run_stage_worker(config, loglevel)
    if not config.placement(os.environ).has_rank0:  # another machine's share of a worker group
        from workers.follower_node import serve_follower_ranks

        return serve_follower_ranks(config)
    runtime = get_runtime(config)  # loads the engine and starts its threads; raises for a bad checkpoint
    on_shutdown = _shutdown_timer(runtime)
    signals.worker_shutting_down.connect(on_shutdown, weak=False)  # one worker per process
    try:
        app = make_app(config)
        feeder = BatchFeeder(runtime, app)
        feeder.start()
        signals.worker_shutting_down.connect(lambda **_: feeder.stop(timeout=0), weak=False)
        worker = app.Worker(
            hostname=config.worker_id,
            pool="threads",
            concurrency=config.max_num_seqs,
            queues=worker_queues(config),
            without_gossip=True,
            without_mingle=True,
            without_heartbeat=True,
            loglevel=loglevel,
            quiet=True,
        )
        worker.start()
        return worker.exitcode or 0
    finally:
        signals.worker_shutting_down.disconnect(on_shutdown)
        close_runtime()


def _shutdown_timer(runtime: WorkerRuntime) -> Any:
    """Celery `worker_shutting_down` handler: requests in flight get `shutdown_grace_s` to finish
    (warm shutdown) or none (cold), then end with UNAVAILABLE so their tasks are acknowledged."""

    def on_shutdown(sender: str, how: str = "Warm", **_: Any) -> None:
        grace = runtime.config.shutdown_grace_s if how == "Warm" else 0.0
        # this runs inside a signal handler: do the rest (logging included) on a thread
        threading.Thread(target=_drain, args=(runtime, how, grace), name="bailing-drain", daemon=True).start()

    return on_shutdown


def _drain(runtime: WorkerRuntime, how: str, grace: float) -> None:
    log.info("%s shutdown: %d requests in flight get %.1f s to finish", how, len(runtime.flights), grace)
    time.sleep(grace)
    n = runtime.end_in_flight()
    if n:
        log.warning("shutdown grace period over: ended %d requests with UNAVAILABLE", n)
