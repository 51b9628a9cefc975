"""The first run: every command the README's quickstart and `bailing up`'s banner print runs against a
demo stack (the session's, on its own ports) and prints something. A command is changed only where
the stack differs from `make up`'s: its addresses and the samples folder."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from bailing.commands.stack import _banner

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[2] / "README.md"


def quickstart_commands() -> list[list[str]]:
    """The shell commands of the README block after "In another terminal:" (comments dropped)."""
    text = README.read_text()
    block = text.split("In another terminal:", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    joined = block.replace("\\\n", " ")
    return [
        shlex.split(line, comments=True) for line in joined.splitlines() if shlex.split(line, comments=True)
    ]


def banner_commands(stack) -> list[list[str]]:
    samples = str(stack.dir / "samples")
    text = _banner(stack.address, list(stack.models), False, samples, stack.http_address)
    return [shlex.split(line) for line in text.splitlines() if line.startswith("  ")]


def localize(argv: list[str], stack) -> list[str]:
    """`make up`'s addresses and paths -> this stack's."""
    out = [a.replace(".bailing/demo/samples", str(stack.dir / "samples")) for a in argv]
    out = [a.replace("127.0.0.1:8000", stack.http_address) for a in out]
    if Path(out[0]).name.startswith("python"):  # the banner's interpreter, relative to the repo
        out[0] = sys.executable
    if Path(out[0]).name == "bailing":
        out = [sys.executable, "-m", "bailing.cli", *out[1:]]
        if "--address" not in out:
            out[4:4] = ["--address", stack.address]
    return out


def run(argv: list[str], cwd: Path) -> str:
    """What the command printed (it must succeed, and the files it names must be written); curl and
    grpcurl run as themselves where installed."""
    if argv[0] == "curl" and not shutil.which("curl"):
        return _curl_by_urllib(argv)
    if argv[0] == "grpcurl" and not shutil.which("grpcurl"):
        return _grpcurl_by_grpc(argv)
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (argv, done.stdout[-500:], done.stderr[-2000:])
    written = [cwd / a for a in argv if re.fullmatch(r"\w+\.(png|wav)", a)]
    assert all(p.stat().st_size > 0 for p in written), argv
    return done.stdout + done.stderr  # a command that writes a file reports it on stderr


def _curl_by_urllib(argv: list[str]) -> str:
    url = next(a for a in argv if a.startswith("http"))
    if "-F" in argv:  # a multipart upload: `-F name=value`, `-F name=@path`
        import httpx2

        fields = [argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "-F"]
        data = {k: v for k, v in fields if not v.startswith("@")}
        files = {k: open(v[1:], "rb") for k, v in fields if v.startswith("@")}  # noqa: SIM115
        return httpx2.post(url, data=data, files=files, timeout=120).text
    data = argv[argv.index("-d") + 1].encode() if "-d" in argv else None
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return resp.read().decode()


def _grpcurl_by_grpc(argv: list[str]) -> str:
    """No grpcurl here: send its JSON payload to its method with the generated stub instead."""
    import grpc
    from google.protobuf import json_format

    from gateway.api import pb, pb_grpc

    payload, address, method = argv[argv.index("-d") + 1], argv[-2], argv[-1]
    assert method == "bailing.v1.Inference/Generate"
    req = json_format.Parse(payload, pb.GenerateRequest())
    with grpc.insecure_channel(address) as channel:
        return json_format.MessageToJson(pb_grpc.InferenceStub(channel).Generate(req, timeout=120))


def test_the_readme_quickstart_commands_print_something(stack, tmp_path):
    commands = quickstart_commands()
    assert len(commands) >= 10 and any(c[0] == "curl" for c in commands)
    for argv in commands:
        out = run(localize(argv, stack), tmp_path)
        assert out.strip(), f"{shlex.join(argv)} printed nothing"


def test_the_banner_commands_print_something(stack, tmp_path):
    commands = banner_commands(stack)
    assert any(c[0] == "curl" for c in commands) and any(c[:2] == ["bailing", "chat"] for c in commands)
    assert any("openai.OpenAI" in " ".join(c) for c in commands)
    for argv in commands:
        out = run(localize(argv, stack), tmp_path)
        assert out.strip(), f"{shlex.join(argv)} printed nothing"
        if argv[0] == "curl" and "chat/completions" in argv[2]:
            assert json.loads(out)["object"] == "chat.completion"
        if argv[0] == "curl" and "transcriptions" in argv[2]:
            assert json.loads(out).get("text"), out
