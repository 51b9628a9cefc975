"""The gateway's settings as one frozen dataclass, built by `bailing gateway` (nothing here reads env)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.tokens import check_token
from pipelines.protocol import MEDIA_TTL_S, WORKER_DEAD_AFTER_S

MIB = 1024 * 1024


@dataclass(frozen=True)
class GatewayConfig:
    redis_url: str
    models: tuple[str, ...]  # served model names; requests for any other model get NOT_FOUND
    host: str = "127.0.0.1"
    port: int = 50051  # 0 = pick a free port (the server reports the one it bound)
    # The OpenAI-compatible HTTP API (gateway/http_api) on this port beside gRPC; None = not served,
    # 0 = a free port. Same host, tokens, TLS files and limits as the gRPC port.
    http_port: int | None = None
    # Bearer tokens (secrets: kept out of repr): with any set, clients must send "authorization: Bearer
    # <token>" with one of them, and each token's batches are visible to that token only.
    api_token: str | None = field(default=None, repr=False)  # BAILING_API_TOKEN
    api_tokens: tuple[str, ...] = field(default=(), repr=False)  # more, e.g. from --api-token-file
    max_streams_per_token: int = 0  # concurrent generation calls per token at most; 0 = no limit
    # TLS: PEM file paths. cert + key serve TLS only (no plaintext); with client_ca, mutual TLS.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    max_inflight: int = 256  # admission limit: more concurrent requests get RESOURCE_EXHAUSTED
    max_message_bytes: int = 32 * MIB  # gRPC max receive and send message size
    max_media_bytes: int = 20 * MIB  # per image/audio/video part
    max_tokens_limit: int = 8192
    max_stop_strings: int = 16
    drain_grace_s: float = 30.0  # on SIGTERM/SIGINT, in-flight requests get this long to finish
    metrics_port: int = 0  # Prometheus HTTP port; 0 = no metrics server
    media_ttl_s: int = MEDIA_TTL_S
    # A batch item's media wait in Redis until it runs: for completion_window_s + media_ttl_s, or
    # this long for a batch without a window (an item that starts later fails: its bytes are gone).
    batch_media_ttl_s: int = 24 * 3600
    worker_dead_after_s: float = WORKER_DEAD_AFTER_S
    health_interval_s: float = 0.5  # how often health and queue depth are refreshed from Redis
    max_batch_items: int = 50000  # items per CreateBatch at most
    # image generation (GenerateImage): the largest request the gateway passes on to a worker
    max_image_side: int = 4096  # width / height in pixels at most
    max_image_pixels: int = 2048 * 2048  # width * height at most
    max_image_steps: int = 200  # denoising steps at most
    max_images_per_request: int = 4  # num_images at most
    max_image_prompt_chars: int = 4000  # prompt / negative_prompt characters at most
    # speech synthesis (SynthesizeSpeech, spoken chat replies)
    max_speech_text_chars: int = 2000  # text (and speaker_text, instruction) characters at most
    max_speaker_audio_bytes: int = 16 * MIB  # the speaker clip to clone, at most

    def __post_init__(self) -> None:
        if not self.redis_url:
            raise ValueError("redis_url is empty: the gateway needs Redis (BAILING_REDIS_URL or --redis-url)")
        models = tuple(self.models)
        if not models or not all(models):
            raise ValueError(f"models must name at least one model, got {self.models!r}")
        if len(set(models)) != len(models):
            raise ValueError(f"models must not repeat a name, got {self.models!r}")
        object.__setattr__(self, "models", models)
        self._check_tokens()
        self._check_tls()
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            raise ValueError(f"http_port must be in [0, 65535], got {self.http_port}")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be in [0, 65535], got {self.metrics_port}")
        for name in (
            "max_inflight",
            "max_message_bytes",
            "max_media_bytes",
            "max_tokens_limit",
            "max_batch_items",
            "max_image_side",
            "max_image_pixels",
            "max_image_steps",
            "max_images_per_request",
            "max_image_prompt_chars",
            "max_speech_text_chars",
            "max_speaker_audio_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_stop_strings", "drain_grace_s", "media_ttl_s", "batch_media_ttl_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("worker_dead_after_s", "health_interval_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    @property
    def tokens(self) -> tuple[str, ...]:
        """Every accepted bearer token: `api_token` and `api_tokens`, each once."""
        return tuple(dict.fromkeys(((self.api_token,) if self.api_token else ()) + self.api_tokens))

    def _check_tokens(self) -> None:
        """Errors name the token's place, never its text."""
        object.__setattr__(self, "api_tokens", tuple(self.api_tokens))
        for i, token in enumerate(self.api_tokens):
            check_token(token, f"api_tokens[{i}] (token {i + 1} of --api-token-file)")
        if self.api_token:  # "" = none, as an empty BAILING_API_TOKEN
            check_token(self.api_token, "api_token")
        if self.max_streams_per_token < 0:
            raise ValueError(f"max_streams_per_token must be >= 0, got {self.max_streams_per_token}")
        if self.max_streams_per_token and not self.tokens:
            raise ValueError(
                "max_streams_per_token needs bearer tokens (BAILING_API_TOKEN or --api-token-file): "
                "without them callers have no identity to count by"
            )

    def _check_tls(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            given, missing = ("cert", "key") if self.tls_key is None else ("key", "cert")
            raise ValueError(
                f"tls_{given} (--tls-{given}) needs tls_{missing} (--tls-{missing}): "
                "TLS takes the certificate and its private key"
            )
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError(
                "tls_client_ca (--tls-client-ca) needs tls_cert and tls_key (--tls-cert, --tls-key): "
                "mutual TLS is TLS with client certificates"
            )
