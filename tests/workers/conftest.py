"""Fixtures for worker tests: `bailing worker` subprocesses (always stopped), a Celery sender, Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.workers.helpers import WorkerProcess


@pytest.fixture()
def start_worker(redis_url: str, demo_ling: Path, tmp_path: Path) -> Iterator:
    """start_worker(name, *extra_args) -> WorkerProcess; every worker is stopped after the test."""
    started: list[WorkerProcess] = []

    def start(name: str, *extra: str) -> WorkerProcess:
        w = WorkerProcess(redis_url, demo_ling, tmp_path / f"worker-{len(started)}.log", name, *extra)
        started.append(w)
        return w

    yield start
    for w in started:
        w.close()


@pytest.fixture(scope="session")
def sender(redis_url: str):
    from celery import Celery

    app = Celery("bailing-test-sender", broker=redis_url, set_as_current=False)
    app.conf.update(task_serializer="json", broker_connection_retry_on_startup=True)
    yield app
    app.close()


@pytest.fixture(scope="session")
def rds(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()
