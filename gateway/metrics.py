"""Prometheus metrics of the gateway, on a registry of its own (served over HTTP when a port is set).

The servicer reports each finished request (`observe_request`: requests by method, tokens, images,
seconds of speech and time to first audio), token deltas as they pass (`observe_token`), and the
health loop sets per-model queue depth and live worker counts.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from gateway.state import RequestTrace

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "bailing_gateway_requests", "Finished RPCs", ["model", "method", "code"], registry=r
        )
        self.tokens = Counter(
            "bailing_gateway_tokens", "Tokens of finished requests", ["model", "kind"], registry=r
        )
        self.images = Counter(
            "bailing_gateway_images", "Generated images delivered", ["model", "method"], registry=r
        )
        self.audio_seconds = Counter(
            "bailing_gateway_audio_seconds", "Seconds of speech delivered", ["model", "method"], registry=r
        )
        self.inflight = Gauge(
            "bailing_gateway_inflight_requests", "Requests being served", ["model"], registry=r
        )
        self.queue_depth = Gauge(
            "bailing_gateway_queue_depth", "Tasks waiting in the model's Celery queue", ["model"], registry=r
        )
        self.live_workers = Gauge(
            "bailing_gateway_live_workers", "Workers with a fresh heartbeat", ["model"], registry=r
        )
        self.ttft = Histogram(
            "bailing_gateway_time_to_first_token_seconds",
            "Gateway accept -> first token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttfa = Histogram(
            "bailing_gateway_time_to_first_audio_seconds",
            "Gateway accept -> first audio chunk (speech synthesis, spoken replies)",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token = Histogram(
            "bailing_gateway_inter_token_latency_seconds",
            "Gap between consecutive token deltas",
            ["model"],
            buckets=TOKEN_GAP_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "bailing_gateway_request_duration_seconds",
            "Gateway accept -> end of the RPC",
            ["model", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        """Start the /metrics HTTP server in a daemon thread."""
        start_http_server(port, addr=host, registry=self.registry)

    def observe_token_gap(self, model: str, gap: float) -> None:
        self.inter_token.labels(model).observe(gap)

    def observe_request(self, trace: RequestTrace, duration_s: float) -> None:
        self.requests.labels(trace.model, trace.method, trace.code).inc()
        self.duration.labels(trace.model, trace.method).observe(duration_s)
        if trace.images:  # image requests: their first output is an image, not a token
            self.images.labels(trace.model, trace.method).inc(trace.images)
        elif trace.first_token_at is not None:
            self.ttft.labels(trace.model).observe(trace.ttft_s)
        if trace.audio_chunks:
            self.audio_seconds.labels(trace.model, trace.method).inc(trace.audio_s)
            self.ttfa.labels(trace.model).observe(trace.ttfa_s)
        if trace.usage is not None:
            u = trace.usage
            for kind, n in (
                ("prompt", u.prompt_tokens),
                ("completion", u.completion_tokens),
                ("reasoning", u.reasoning_tokens),
            ):
                if n:
                    self.tokens.labels(trace.model, kind).inc(n)
