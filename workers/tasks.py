"""The Celery tasks of a worker: decode the JSON payload, hand it to this process's runtime.

`TASK_GENERATE` (interactive, the model's queue) -> `WorkerRuntime.run_payload`. Batch items
(`TASK_BATCH_ITEM` messages on the batch queue) are not Celery-consumed: the `BatchFeeder` pulls them.

Thin on purpose: all logic (redelivery checks, pipeline, engine, events) lives in the runtime, which
never raises, so every job is acknowledged after its stream got its terminal event.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, Task

from pipelines.protocol import TASK_GENERATE
from workers.config import WorkerConfig
from workers.process_runtime import get_runtime


def register_tasks(app: Celery, config: WorkerConfig) -> Task:
    @app.task(name=TASK_GENERATE, bind=True, ignore_result=True)
    def generate(self: Task, *args: Any, **kwargs: Any) -> None:
        payload = args[0] if len(args) == 1 and not kwargs else None  # anything else is malformed
        get_runtime(config).run_payload(payload, self.request.id)

    return generate
