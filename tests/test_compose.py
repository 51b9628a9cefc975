"""docker-compose.yml, Dockerfile and constraints.txt, checked statically (no Docker daemon needed).

Every `bailing ...` command line the containers run is parsed by the real CLI parser, so a renamed
subcommand or flag breaks this test instead of a deployment.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from bailing.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
IMAGE = "bailing-serve"
_VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def _defaults(value):
    """Compose's ${VAR:-default} interpolation with every variable unset."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: m.group(2) or "", value)
    if isinstance(value, list):
        return [_defaults(v) for v in value]
    if isinstance(value, dict):
        return {k: _defaults(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict:
    return _defaults(yaml.safe_load((REPO / "docker-compose.yml").read_text()))


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def raw_services() -> dict:
    """The services as written, ${VAR:-default} uninterpolated."""
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]


def _bailing_services(services: dict) -> dict:
    return {name: svc for name, svc in services.items() if svc.get("image", "").startswith(IMAGE)}


def _workers(services: dict) -> dict:
    return {name: svc for name, svc in services.items() if name.startswith("worker-")}


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(duration))
    assert parts, f"not a compose duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def _parse(argv: list[str]):
    """Parse a `bailing` argv with the real parser; a bad subcommand or flag fails the test."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"`bailing {shlex.join(argv)}` is not a valid command line (exit {exc.code})")


def _bailing_argvs(services: dict) -> list[list[str]]:
    """Every bailing command line in the file: service commands, healthchecks, shell snippets."""
    argvs = []
    for svc in _bailing_services(services).values():
        command = svc.get("command")
        if svc.get("entrypoint") is None and isinstance(command, list):
            argvs.append(command)  # the image's entrypoint is `bailing`
        elif command is not None:
            script = " ".join(command) if isinstance(command, list) else command
            argvs += [shlex.split(m) for m in re.findall(r"\bbailing\s+([^;&|]+)", script)]
        test = svc.get("healthcheck", {}).get("test", [])
        if test[:2] == ["CMD", "bailing"]:
            argvs.append(test[2:])
    return argvs


def _volume(svc: dict, target: str) -> tuple[str, str]:
    """(source, mode) of the volume mounted at `target`."""
    for spec in svc.get("volumes", []):
        source, mount, *mode = spec.split(":")
        if mount == target:
            return source, (mode[0] if mode else "rw")
    pytest.fail(f"no volume mounted at {target}")


def test_services_and_images(services):
    assert {"redis", "gateway", "init-demo"} <= set(services)
    assert _workers(services), "at least one worker-<family> service"
    for name, svc in _bailing_services(services).items():
        assert svc.get("build") == ".", f"{name} builds the image from the Dockerfile"
    assert set(_bailing_services(services)) == set(services) - {"redis"}


def test_redis_keeps_an_append_only_file(compose, services):
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    source, _ = _volume(redis, "/data")
    assert source in compose["volumes"], "AOF lives on a named volume"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert redis["restart"] == "unless-stopped"
    # The same command line for the official image and for one without its config (a plain Debian
    # redis-server): the AOF in the volume, connections from the other containers accepted.
    assert command[command.index("--dir") + 1] == "/data"
    assert command[command.index("--protected-mode") + 1] == "no"


def test_images_and_ports_are_variables_with_the_usual_defaults(raw_services):
    assert raw_services["redis"]["image"] == "${REDIS_IMAGE:-redis:7}"
    ports = ["${BAILING_PORT:-50051}:50051", "${BAILING_HTTP_PORT:-8000}:8000"]
    assert raw_services["gateway"]["ports"] == ports


def test_every_bailing_command_line_parses(services):
    argvs = _bailing_argvs(services)
    commands = {argv[0] for argv in argvs}
    assert {"gateway", "worker", "healthcheck", "init-demo"} <= commands
    for argv in argvs:
        _parse(argv)


def test_gateway(services):
    gateway = services["gateway"]
    args = _parse(gateway["command"])
    assert args.command == "gateway"
    assert args.host == "0.0.0.0", "reachable from outside its container"
    assert f"{args.port}:{args.port}" in gateway["ports"]
    assert f"{args.http_port}:{args.http_port}" in gateway["ports"], "the HTTP API is published too"
    assert gateway["environment"]["BAILING_REDIS_URL"].startswith("redis://redis:6379")
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"
    assert gateway["restart"] == "unless-stopped"
    check = _parse(gateway["healthcheck"]["test"][2:])
    assert check.command == "healthcheck" and check.address.endswith(f":{args.port}") and not check.worker
    assert _seconds(gateway["stop_grace_period"]) > args.drain_grace, "the drain finishes before the kill"


def test_gateway_models_match_the_worker_services(services):
    models = _parse(services["gateway"]["command"]).models.split(",")
    served = set()
    for name, svc in _workers(services).items():
        args = _parse(svc["command"])
        assert args.command == "worker"
        assert name == f"worker-{args.name or args.family}"
        served.add(args.name or args.family)
    assert sorted(models) == sorted(served)


def test_workers(compose, services):
    for name, svc in _workers(services).items():
        args = _parse(svc["command"])
        assert args.device == "cuda", name
        source, mode = _volume(svc, "/models")
        assert mode == "ro", f"{name} mounts the checkpoints read-only"
        assert source in compose["volumes"]
        assert Path(args.model).parent == Path("/models")
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
        assert svc["environment"]["BAILING_REDIS_URL"].startswith("redis://redis:6379")
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        assert svc["depends_on"]["init-demo"]["condition"] == "service_completed_successfully"
        assert svc["restart"] in ("unless-stopped", "always", "on-failure")
        check = _parse(svc["healthcheck"]["test"][2:])
        assert check.command == "healthcheck" and check.worker == (args.name or args.family)
        assert _seconds(svc["stop_grace_period"]) >= 120, "longer than the longest request"
        assert _seconds(svc["healthcheck"]["start_period"]) >= 60, "time to load a checkpoint"


def test_init_demo_fills_the_workers_volume(services):
    init = services["init-demo"]
    source, mode = _volume(init, "/models")
    assert mode == "rw"
    for svc in _workers(services).values():
        assert _volume(svc, "/models")[0] == source
    (argv,) = [a for a in _bailing_argvs({"init-demo": init}) if a[0] == "init-demo"]
    assert _parse(argv).dir == "/models"
    assert init["restart"] == "no"


def test_dockerfile():
    text = (REPO / "Dockerfile").read_text()
    # The base is a build argument, python:3.11-slim unless given (make compose-check: a local Debian).
    arg = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M)
    from_ = re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    assert arg and from_ and arg.start() < from_.start(), "ARG BASE_IMAGE=... before FROM ${BASE_IMAGE}"
    assert arg.group(1) == "python:3.11-slim"
    # Everything goes into a venv on PATH, whichever base (and wherever its python3) it is.
    assert "python3 -m venv /opt/venv" in text and re.search(r"PATH=/opt/venv/bin:\$PATH", text)
    assert "python -m gateway.protos" in text, "the gRPC code is generated at build time"
    assert "-c constraints.txt" in text
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0"), "runs as a non-root user"
    assert re.search(r'^ENTRYPOINT \["bailing"\]', text, re.M)
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".git", ".bailing", "gateway/_proto"} <= set(ignored)


def test_constraints_agree_with_pyproject():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = [
        ln for ln in (REPO / "constraints.txt").read_text().splitlines() if ln and not ln.startswith("#")
    ]
    pins = {}
    for line in lines:
        name, _, version = line.partition("==")
        assert version, f"constraints.txt pins exact versions: {line!r}"
        pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    for dep in deps:
        name = re.sub(r"[-_.]+", "-", re.split(r"[\[<>=!~; ]", dep, maxsplit=1)[0]).lower()
        assert name in pins, f"{name} (pyproject.toml) is missing from constraints.txt"
        exact = re.search(r"==([^,;\s]+)", dep)
        if exact:
            assert pins[name] == exact.group(1), (
                f"{name}: pyproject {exact.group(1)} != constraints {pins[name]}"
            )


def test_the_optional_ming_image_stage(services):
    """`--profile split-image`: a diffusion-stage worker of ming on its own GPU; worker-ming hands
    image requests to it when BAILING_MING_IMAGE_STAGE=remote (default local: no second worker)."""
    stage = services["image-stage-ming"]
    assert stage["profiles"] == ["split-image"]
    args = _parse(stage["command"])
    assert (args.command, args.family, args.role, args.device) == ("worker", "ming", "image-stage", "cuda")
    check = _parse(stage["healthcheck"]["test"][2:])
    assert check.worker == "ming" and check.image_stage
    (device,) = stage["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    assert _parse(services["worker-ming"]["command"]).image_stage == "local"


def test_the_commented_two_gpu_worker_group_example_is_valid_once_uncommented():
    """The docker-compose example of a 2-GPU worker group parses as a service once its '# ' are removed."""
    lines = (REPO / "docker-compose.yml").read_text().splitlines()
    start = lines.index("  # worker-ling-flash:")
    block = []
    for line in lines[start:]:
        if not line.startswith("  #") or (
            block and line.startswith("  # ") and not line.startswith("  #   ")
        ):
            break
        block.append("  " + line[4:])
    service = yaml.safe_load("\n".join(["services:", *block]).replace("<<: *bailing", "image: x"))
    spec = service["services"]["worker-ling-flash"]
    argv = spec["command"]
    assert argv[argv.index("--tensor-parallel") + 1] == "2" and argv[0] == "worker"
    assert spec["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 2


def test_the_compose_check_override_runs_cpu_twins_of_the_workers(compose, services):
    """docker/compose-check.yml (`make compose-check`, bench/compose_check.py) layered on the users' file:
    the check's own image tag, CPU twins of worker-ling and worker-ming (no GPU reservation) and a gateway
    serving exactly their models, ming among them for Transcribe."""
    from bench.compose_check import FILES, IMAGE, KILLED, SERVICES

    assert FILES[0] == REPO / "docker-compose.yml"
    override = _defaults(yaml.safe_load(FILES[1].read_text()))["services"]
    assert set(SERVICES) <= set(services) | set(override)
    for name in set(SERVICES) - {"redis"}:
        assert override[name]["image"] == IMAGE, f"{name} runs the image the check built"
    twins = {name: svc for name, svc in override.items() if name.startswith("worker-")}
    assert KILLED in twins and set(twins) <= set(SERVICES)
    served = set()
    for name, svc in twins.items():
        args = _parse(svc["command"])
        model = args.name or args.family
        assert name == f"worker-{model}-cpu" and args.device == "cpu" and "deploy" not in svc
        users = _parse(services[f"worker-{model}"]["command"])
        assert (args.family, args.model) == (users.family, users.model)
        assert _parse(svc["healthcheck"]["test"][2:]).worker == model
        assert svc["restart"] == services[f"worker-{model}"]["restart"] == "unless-stopped"
        assert _volume(svc, "/models") == ("models", "ro") and "models" in compose["volumes"]
        assert svc["depends_on"] == services[f"worker-{model}"]["depends_on"]
        served.add(model)
    assert "ming" in served, "a model that takes audio, for the transcription"
    gateway, users = _parse(override["gateway"]["command"]), _parse(services["gateway"]["command"])
    assert sorted(gateway.models.split(",")) == sorted(served)
    assert {**vars(gateway), "models": ""} == {**vars(users), "models": ""}, "otherwise as users run it"
