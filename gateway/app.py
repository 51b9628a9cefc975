"""The gateway process: `GatewayServer` builds the grpc.aio server (the servicers of gateway/server.py and
gateway/jobs.py, health, reflection, the bearer-token and request-reader interceptors, TLS) and, with
`http_port`, the OpenAI-compatible HTTP API over the same servicer (gateway/http_api), and runs them;
`serve` runs it until SIGTERM/SIGINT, then drains.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import time
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway.api import INFERENCE_SERVICE, JOBS_SERVICE, pb_grpc
from gateway.auth import BearerTokenInterceptor
from gateway.config import GatewayConfig
from gateway.dispatch import Dispatcher
from gateway.health import HealthMonitor
from gateway.http_api.app import HttpFrontDoor, OpenAIRoutes
from gateway.jobs import JobsServicer
from gateway.metrics import GatewayMetrics
from gateway.request_reader import RequestReader
from gateway.server import WARM_CONNECTIONS, InferenceServicer
from gateway.tls import server_credentials
from gateway.tokens import TokenSet

log = logging.getLogger(__name__)


class GatewayServer:
    """Builds and runs the grpc.aio server; `start()` binds and returns the port."""

    def __init__(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg
        # read (and checked) first, so a bad PEM file fails before anything is opened or bound
        self._tls = server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca) if cfg.tls_cert else None
        self.port = 0
        self.metrics = GatewayMetrics()
        self.dispatcher = Dispatcher(cfg)
        self.monitor = HealthMonitor(cfg, self.dispatcher, self.metrics)
        tokens = TokenSet(cfg.tokens)
        self.servicer = InferenceServicer(cfg, self.dispatcher, self.metrics, tokens)
        self.jobs = JobsServicer(cfg, self.dispatcher, tokens)
        interceptors = [BearerTokenInterceptor(tokens)] if tokens else []
        self.server = grpc.aio.server(
            interceptors=[*interceptors, RequestReader()],  # unparseable / missing requests: INVALID_ARGUMENT
            options=[
                ("grpc.max_receive_message_length", cfg.max_message_bytes),
                ("grpc.max_send_message_length", cfg.max_message_bytes),
                ("grpc.so_reuseport", 0),  # a taken port is an error, not a silent second listener
                # a client whose connection vanished without a FIN (network gone, host down) is found
                # by a ping every 20 s answered within 10 s, also while its stream is idle
                ("grpc.keepalive_time_ms", 20_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.max_pings_without_data", 0),
            ],
        )
        pb_grpc.add_InferenceServicer_to_server(self.servicer, self.server)
        pb_grpc.add_JobsServicer_to_server(self.jobs, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.monitor.servicer, self.server)
        services = [INFERENCE_SERVICE, JOBS_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(services, self.server)
        self.http_port = 0
        self.http = None
        if cfg.http_port is not None:
            routes = OpenAIRoutes(self.servicer, self.jobs, cfg.max_message_bytes)
            self.http = HttpFrontDoor(routes, cfg.host, cfg.http_port, _http_tls(cfg))

    @property
    def address(self) -> str:
        return f"{self.cfg.host}:{self.port}"

    async def start(self) -> int:
        where = f"{self.cfg.host}:{self.cfg.port}"
        if self._tls is not None:  # TLS only: a plaintext client fails its handshake
            self.port = self.server.add_secure_port(where, self._tls)
        else:
            self.port = self.server.add_insecure_port(where)
        if not self.port:
            raise OSError(f"cannot listen on {self.cfg.host}:{self.cfg.port}")
        await self.dispatcher.warm_up(min(self.cfg.max_inflight, WARM_CONNECTIONS))
        await self.monitor.start()
        await self.server.start()
        if self.http is not None:
            self.http_port = await self.http.start()
        if self.cfg.metrics_port:
            self.metrics.serve(self.cfg.metrics_port, self.cfg.host)
        return self.port

    async def drain(self, force: asyncio.Event | None = None) -> None:
        """NOT_SERVING, refuse new calls, let in-flight ones finish (up to drain_grace_s), stop."""
        self.servicer.draining = True
        await self.monitor.drain()
        log.info(
            "draining: %d request(s) in flight, grace %.1f s", self.servicer.inflight, self.cfg.drain_grace_s
        )
        until = time.monotonic() + self.cfg.drain_grace_s
        while self.servicer.inflight and time.monotonic() < until and not (force and force.is_set()):
            await asyncio.sleep(0.05)
        await self.stop(grace=0.5)

    async def stop(self, grace: float | None = None) -> None:
        if self.http is not None:
            await self.http.stop()  # its calls still running are cancelled: they send their cancels
        await self.server.stop(grace)  # handlers still running are cancelled: they send their cancels
        await self.servicer.flush_background()
        await self.monitor.stop()
        await self.dispatcher.close()
        self.jobs.close()


async def serve(cfg: GatewayConfig, announce: Callable[[str], None] = print) -> int:
    """Run until SIGTERM/SIGINT, then drain; a second signal cuts the grace short. Returns 0."""
    gateway = GatewayServer(cfg)
    await gateway.start()
    loop = asyncio.get_running_loop()
    stop, force = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        (force if stop.is_set() else stop).set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    http = f", HTTP (OpenAI API) on {cfg.host}:{gateway.http_port}" if gateway.http is not None else ""
    announce(f"gateway listening on {gateway.address}{http}")
    await stop.wait()
    await gateway.drain(force)
    log.info("gateway stopped")
    return 0


def _http_tls(cfg: GatewayConfig) -> dict[str, Any]:
    """uvicorn's TLS settings from the gateway's PEM files (none: plaintext)."""
    if not cfg.tls_cert:
        return {}
    out: dict[str, Any] = {"ssl_certfile": cfg.tls_cert, "ssl_keyfile": cfg.tls_key}
    if cfg.tls_client_ca:
        out.update(ssl_ca_certs=cfg.tls_client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
    return out
