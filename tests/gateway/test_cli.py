"""`bailing gateway` as its own process: the ready line, flags, and the SIGTERM drain."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.api import pb, pb_grpc

REPO = Path(__file__).resolve().parents[2]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BAILING_")}
    return {**env, **extra}


def start_cli(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bailing.cli", "gateway", "--port", "0", *args],
        cwd=REPO,
        env=env or _env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline().strip()
    if not line.startswith("gateway listening on "):
        proc.kill()
        raise AssertionError(f"no ready line, got {line!r}; stderr:\n{proc.stderr.read()}")
    return proc, line.removeprefix("gateway listening on ")


def health(channel, service: str = "") -> int:
    return (
        health_pb2_grpc.HealthStub(channel)
        .Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        .status
    )


def wait_for(predicate, timeout: float, what: str) -> None:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_missing_redis_url_is_a_user_error():
    out = subprocess.run(
        [sys.executable, "-m", "bailing.cli", "gateway", "--models", "ling"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "BAILING_REDIS_URL" in out.stderr


def test_token_comes_from_the_environment(redis_url, model):
    proc, address = start_cli(
        "--models", model, env=_env(BAILING_REDIS_URL=redis_url, BAILING_API_TOKEN="tok")
    )
    try:
        with grpc.insecure_channel(address) as ch:
            stub = pb_grpc.InferenceStub(ch)
            with pytest.raises(grpc.RpcError) as info:
                stub.ListModels(pb.ListModelsRequest(), timeout=5)
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
            models = stub.ListModels(
                pb.ListModelsRequest(), timeout=5, metadata=[("authorization", "Bearer tok")]
            )
            assert [m.name for m in models.models] == [model]
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0


def test_sigterm_drains_in_flight_requests(redis_url, model, fake_worker):
    worker = fake_worker(model)
    proc, address = start_cli("--models", model, "--redis-url", redis_url, "--drain-grace", "20")
    try:
        with grpc.insecure_channel(address) as ch:
            stub = pb_grpc.InferenceStub(ch)
            wait_for(lambda: health(ch) == SERVING, 5, "health SERVING")
            future = stub.Generate.future(
                pb.GenerateRequest(model=model, prompt="hi", request_id="drain-1"), timeout=30
            )
            worker.take_job()
            proc.send_signal(signal.SIGTERM)
            wait_for(lambda: health(ch) == NOT_SERVING, 5, "health NOT_SERVING while draining")
            assert health(ch, model) == NOT_SERVING
            with pytest.raises(grpc.RpcError) as info:
                stub.Generate(pb.GenerateRequest(model=model, prompt="late"), timeout=5)
            assert (
                info.value.code() is grpc.StatusCode.UNAVAILABLE and "shutting down" in info.value.details()
            )
            assert proc.poll() is None  # still waiting for the in-flight request
            worker.answer("drain-1", text="made it")
            assert future.result(timeout=10).text == "made it "
        assert proc.wait(15) == 0
        assert '"id":"drain-1"' in proc.stderr.read()  # the request's log line
    finally:
        if proc.poll() is None:
            proc.kill()


def test_drain_grace_expiry_cancels_what_is_left(redis_url, model, fake_worker):
    import redis

    from pipelines.protocol import cancel_key

    worker = fake_worker(model)
    proc, address = start_cli("--models", model, "--redis-url", redis_url, "--drain-grace", "1")
    try:
        with grpc.insecure_channel(address) as ch:
            stub = pb_grpc.InferenceStub(ch)
            wait_for(lambda: health(ch) == SERVING, 5, "health SERVING")
            call = stub.GenerateStream(
                pb.GenerateRequest(model=model, prompt="hi", request_id="slow-1"), timeout=30
            )
            worker.take_job()
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(grpc.RpcError) as info:
                list(call)
            assert info.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        assert proc.wait(15) == 0, proc.stderr.read()
        stderr = proc.stderr.read()
        assert redis.Redis.from_url(redis_url).exists(cancel_key("slow-1")), stderr  # the engine drops it
    finally:
        if proc.poll() is None:
            proc.kill()


def test_media_size_limit_flag_reaches_the_config(redis_url):
    import argparse

    from bailing.commands import gateway as command

    parser = argparse.ArgumentParser()
    command.add_parsers(parser.add_subparsers())
    args = parser.parse_args(
        ["gateway", "--models", "ming", "--redis-url", redis_url, "--max-media-bytes", "1000"]
    )
    assert command._config(args).max_media_bytes == 1000
    default = parser.parse_args(["gateway", "--models", "ming", "--redis-url", redis_url])
    assert command._config(default).max_media_bytes == 20 * 1024 * 1024
    args.max_media_bytes = 0
    with pytest.raises(ValueError, match="max_media_bytes must be >= 1"):
        command._config(args)


def test_speech_limit_flags_reach_the_config(redis_url):
    import argparse

    from bailing.commands import gateway as command

    parser = argparse.ArgumentParser()
    command.add_parsers(parser.add_subparsers())
    base = ["gateway", "--models", "ming2", "--redis-url", redis_url]
    args = parser.parse_args([*base, "--max-speech-text-chars", "500", "--max-speaker-audio-bytes", "4096"])
    cfg = command._config(args)
    assert (cfg.max_speech_text_chars, cfg.max_speaker_audio_bytes) == (500, 4096)
    default = command._config(parser.parse_args(base))
    assert (default.max_speech_text_chars, default.max_speaker_audio_bytes) == (2000, 16 * 1024 * 1024)
    args.max_speech_text_chars = 0
    with pytest.raises(ValueError, match="max_speech_text_chars must be >= 1"):
        command._config(args)
