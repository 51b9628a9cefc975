"""The Celery tasks of a worker: decode the JSON payload, hand it to this process's runtime.

`TASK_GENERATE` (interactive, the model's queue) -> `WorkerRuntime.run_payload`; `TASK_BATCH_ITEM`
(the model's batch queue) -> `BatchRunner.run_payload`, which may re-queue the item with `app`.

Thin on purpose: all logic (redelivery checks, pipeline, engine, events) lives in the runtime, which
never raises, so every job is acknowledged after its stream got its terminal event.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, Task

from pipelines.batches import TASK_BATCH_ITEM
from pipelines.protocol import TASK_GENERATE
from workers.config import WorkerConfig
from workers.runtime import get_runtime


def register_tasks(app: Celery, config: WorkerConfig) -> tuple[Task, Task]:
    @app.task(name=TASK_GENERATE, bind=True, ignore_result=True)
    def generate(self: Task, *args: Any, **kwargs: Any) -> None:
        payload = args[0] if len(args) == 1 and not kwargs else None  # anything else is malformed
        get_runtime(config).run_payload(payload, self.request.id)

    @app.task(name=TASK_BATCH_ITEM, bind=True, ignore_result=True)
    def batch_item(self: Task, *args: Any, **kwargs: Any) -> None:
        payload = args[0] if len(args) == 1 and not kwargs else None
        get_runtime(config).batches.run_payload(payload, self.app)

    return generate, batch_item
