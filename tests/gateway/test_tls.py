"""TLS and mutual TLS on a real gateway (real gRPC handshakes, certificates made per test session):
plaintext and certificate-less or foreign-CA clients are refused; good clients (raw gRPC, `Client`,
`AsyncClient`, the CLI) are served."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest

from bailing.client import AsyncClient, BailingConnectionError, Client
from gateway.api import pb, pb_grpc
from gateway.app import GatewayServer
from gateway.config import GatewayConfig
from tests.gateway.certs import Pki, make_pki

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_channel(address: str, pki: Pki, client=None) -> grpc.Channel:
    """A TLS channel that trusts the test CA, presenting `client`'s certificate if given."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=client.key.read_bytes() if client else None,
        certificate_chain=client.cert.read_bytes() if client else None,
    )
    return grpc.secure_channel(address, creds)


def list_models(channel: grpc.Channel) -> list[str]:
    with channel:
        reply = pb_grpc.InferenceStub(channel).ListModels(pb.ListModelsRequest(), timeout=5)
    return [m.name for m in reply.models]


def refused(channel: grpc.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        list_models(channel)
    return info.value.code()


def mtls(pki: Pki) -> dict[str, str]:
    return {"tls_cert": str(pki.server.cert), "tls_key": str(pki.server.key), "tls_client_ca": str(pki.ca)}


def test_plaintext_is_refused_when_tls_is_on(start_gateway, model, pki):
    gw = start_gateway((model,), tls_cert=str(pki.server.cert), tls_key=str(pki.server.key))
    assert refused(grpc.insecure_channel(gw.address)) is grpc.StatusCode.UNAVAILABLE
    assert list_models(tls_channel(gw.address, pki)) == [model]  # no client certificate needed


def test_mutual_tls_refuses_clients_without_a_certificate_of_its_ca(start_gateway, model, pki):
    gw = start_gateway((model,), **mtls(pki))
    assert refused(grpc.insecure_channel(gw.address)) is grpc.StatusCode.UNAVAILABLE
    assert refused(tls_channel(gw.address, pki)) is grpc.StatusCode.UNAVAILABLE  # no certificate
    assert refused(tls_channel(gw.address, pki, pki.stranger)) is grpc.StatusCode.UNAVAILABLE  # other CA
    assert list_models(tls_channel(gw.address, pki, pki.client)) == [model]


def test_mutual_tls_client_gets_its_answer(start_gateway, fake_worker, model, pki):
    gw = start_gateway((model,), **mtls(pki))
    worker = fake_worker(model)
    with tls_channel(gw.address, pki, pki.client) as channel:
        call = pb_grpc.InferenceStub(channel).Generate.future(
            pb.GenerateRequest(model=model, prompt="hi", request_id="tls-1"), timeout=30
        )
        assert worker.take_job()["request_id"] == "tls-1"
        worker.answer("tls-1", text="over tls")
        assert call.result(timeout=10).text == "over tls "


def test_bailing_clients_speak_mutual_tls(start_gateway, fake_worker, model, pki):
    gw = start_gateway((model,), **mtls(pki))
    worker = fake_worker(model)
    files = {"tls_ca": pki.ca, "tls_cert": str(pki.client.cert), "tls_key": str(pki.client.key)}
    with Client(gw.address, timeout=10, **files) as client:
        client.wait_ready(10)
        reply: list = []
        asking = threading.Thread(target=lambda: reply.append(client.generate(model, "hi", request_id="c-1")))
        asking.start()
        assert worker.take_job()["request_id"] == "c-1"
        worker.answer("c-1", text="secure hello")
        asking.join(10)
        assert reply[0].text == "secure hello "

    async def async_models() -> list[str]:
        async with AsyncClient(gw.address, timeout=10, **files) as client:
            return [m.name for m in await client.list_models()]

    assert asyncio.run(async_models()) == [model]
    with Client(gw.address, tls_ca=pki.ca) as anonymous, pytest.raises(BailingConnectionError):
        anonymous.wait_ready(10)  # TLS without a client certificate: the handshake fails


def test_tls_options_are_checked_up_front(tmp_path, pki):
    with pytest.raises(ValueError, match=r"tls_cert \(--tls-cert, BAILING_TLS_CERT\) needs tls_key"):
        Client("127.0.0.1:1", tls_cert=pki.client.cert)
    with pytest.raises(ValueError, match=r"tls_ca .*cannot read .*missing.pem"):
        AsyncClient("127.0.0.1:1", tls_ca=tmp_path / "missing.pem")
    (tmp_path / "not.pem").write_text("hello")
    with pytest.raises(ValueError, match="not a PEM file"):
        Client("127.0.0.1:1", tls_ca=tmp_path / "not.pem")
    base = {"redis_url": "redis://unused", "models": ("ling",)}
    with pytest.raises(ValueError, match=r"tls_key \(--tls-key\) needs tls_cert \(--tls-cert\)"):
        GatewayConfig(**base, tls_key=str(pki.server.key))
    with pytest.raises(ValueError, match=r"tls_client_ca \(--tls-client-ca\) needs tls_cert"):
        GatewayConfig(**base, tls_client_ca=str(pki.ca))
    cfg = GatewayConfig(**base, tls_cert=str(pki.server.cert), tls_key=str(tmp_path / "gone.key"))
    with pytest.raises(ValueError, match=r"tls_key \(--tls-key\): cannot read .*gone.key"):
        GatewayServer(cfg)  # before anything is opened or bound


def _env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("BAILING_")}, **extra}


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "bailing.cli", *args]
    return subprocess.run(argv, cwd=REPO, env=_env(**env), capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_cli_gateway_and_commands_over_mutual_tls(redis_url, model, pki, tmp_path):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("# team a\ntok-alpha-1\n\ntok-beta-2\n")
    argv = ["gateway", "--port", "0", "--models", model, "--redis-url", redis_url]
    argv += ["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key)]
    argv += ["--tls-client-ca", str(pki.ca), "--api-token-file", str(tokens)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bailing.cli", *argv],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("gateway listening on "), proc.stderr.read()
        address = line.removeprefix("gateway listening on ")
        flags = ["--address", address, "--tls-cert", str(pki.client.cert), "--tls-key", str(pki.client.key)]
        ok = _cli("models", "--json", *flags, BAILING_TLS_CA=str(pki.ca), BAILING_API_TOKEN="tok-beta-2")
        assert ok.returncode == 0 and model in ok.stdout, ok.stderr
        bad = _cli("models", *flags, "--tls-ca", str(pki.ca), BAILING_API_TOKEN="tok-wrong")
        assert bad.returncode == 1 and "UNAUTHENTICATED" in bad.stderr
        plain = _cli("models", "--address", address, "--timeout", "5", BAILING_API_TOKEN="tok-alpha-1")
        assert plain.returncode == 3  # cannot connect: the port speaks TLS only
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=15)
    assert proc.returncode == 0
    assert "tok-alpha-1" not in stderr and "tok-beta-2" not in stderr and "tok-wrong" not in stderr
