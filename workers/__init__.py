"""The worker side: a Celery app whose thin task hands each job to this process's one engine runtime.

Flow: `bailing worker` builds a `WorkerConfig` -> `app.run_worker` loads the `WorkerRuntime` (engine,
emitter, cancel listener, heartbeat) -> Celery consumes `queue_name(config.name)` -> `tasks.generate`
-> `runtime.run(job)` -> events in `stream_key(request_id)`.
"""
