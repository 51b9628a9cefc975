"""The images `make compose-check` runs: a local Debian base (where no registry is reachable) and the project
image built on it.

Flow: `ensure_base(tag)` -> debootstrap bookworm (python3 + venv, redis-server, the host's CA certificates)
-> `docker import` as `tag`, once; `build_image(tag, base)` -> `docker build --build-arg BASE_IMAGE=base`,
with the host's proxy variables passed on as build args. Both log to files; a failure raises
`ImageError` with the log's last lines.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

LOCAL_BASE = "bailing-base:bookworm"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# python3 (3.11 in bookworm) with venv for the image's /opt/venv; redis-server + redis-cli so the same
# base serves as the Redis service's image (REDIS_IMAGE); ca-certificates for pip behind a TLS proxy.
BASE_PACKAGES = ("python3", "python3-venv", "redis-server", "ca-certificates")
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# pip, requests and OpenSSL read these; the base trusts what the host trusts (a TLS-intercepting proxy).
BASE_ENV = {"PIP_CERT": CA_BUNDLE, "REQUESTS_CA_BUNDLE": CA_BUNDLE, "SSL_CERT_FILE": CA_BUNDLE}
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


class ImageError(RuntimeError):
    pass


def _run_logged(argv: list[str], log: Path, **kwargs) -> None:
    """Run `argv` with stdout + stderr appended to `log`; raise ImageError with its tail on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        code = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False, **kwargs).returncode
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise ImageError(f"`{' '.join(argv[:3])} ...` exited {code} (log: {log}):\n{tail}")


def image_exists(tag: str) -> bool:
    probe = subprocess.run(["docker", "image", "inspect", tag], capture_output=True, check=False)
    return probe.returncode == 0


def debian_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The host's Debian mirror (the first non-security `deb` / `URIs:` entry), else deb.debian.org."""
    files = [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*"))]
    for path in files:
        text = path.read_text(errors="replace") if path.is_file() else ""
        for url in re.findall(r"^(?:deb\s+(?:\[[^]]*\]\s+)?|URIs:\s*)(\S+)", text, re.M):
            if url.rstrip("/").endswith("/debian"):
                return url.rstrip("/")
    return DEFAULT_MIRROR


def _configure_root(root: Path) -> None:
    """Trust the host's extra CAs, drop apt's caches and redis' default config dir noise."""
    extra = sorted(HOST_CA_DIR.glob("*.crt")) if HOST_CA_DIR.is_dir() else []
    target = root / HOST_CA_DIR.relative_to("/")
    target.mkdir(parents=True, exist_ok=True)
    for cert in extra:
        shutil.copy2(cert, target / cert.name)
    subprocess.run(["chroot", str(root), "update-ca-certificates"], capture_output=True, check=True)
    subprocess.run(["chroot", str(root), "apt-get", "clean"], capture_output=True, check=True)
    shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
    (root / "var/lib/apt/lists/partial").mkdir(parents=True)


def build_base(tag: str, log: Path) -> str:
    """debootstrap a minimal bookworm with BASE_PACKAGES and import it as `tag`; returns a summary."""
    if os.geteuid() != 0 or not shutil.which("debootstrap"):
        raise ImageError(f"building {tag} needs root and debootstrap (apt-get install debootstrap)")
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(prefix="bailing-base-") as tmp:
        root = Path(tmp) / "root"
        argv = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(root)]
        _run_logged([*argv, mirror], log)
        _configure_root(root)
        changes = [f"ENV {key}={value}" for key, value in BASE_ENV.items()]
        changes.append('CMD ["/bin/sh"]')
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        try:
            flags = [arg for change in changes for arg in ("--change", change)]
            _run_logged(["docker", "import", *flags, "-", tag], log, stdin=tar.stdout)
        finally:
            tar.stdout.close()
            tar.wait()
    return f"debootstrap {SUITE} from {mirror}"


def ensure_base(tag: str, log: Path) -> str:
    """`tag` present: nothing to do. Missing: the local base is built; any other image is pulled."""
    if image_exists(tag):
        return f"{tag} present"
    if tag == LOCAL_BASE:
        return build_base(tag, log)
    _run_logged(["docker", "pull", tag], log)
    return f"pulled {tag}"


def _image_field(tag: str, field: str) -> str | None:
    probe = subprocess.run(["docker", "image", "inspect", "-f", field, tag], capture_output=True, text=True)
    return probe.stdout.strip() if probe.returncode == 0 else None


def build_image(tag: str, base: str, context: Path, log: Path) -> str:
    """`docker build` the project image on `base` (the layer cache makes reruns quick); the image `tag`
    named before is removed once nothing uses it (its layers stay as the cache)."""
    args = ["--build-arg", f"BASE_IMAGE={base}"]
    for name in PROXY_VARS:
        if os.environ.get(name):
            args += ["--build-arg", f"{name}={os.environ[name]}"]
    previous = _image_field(tag, "{{.Id}}")
    _run_logged(["docker", "build", *args, "-t", tag, str(context)], log)
    if previous and previous != _image_field(tag, "{{.Id}}"):
        subprocess.run(["docker", "image", "rm", previous], capture_output=True, check=False)
    return f"{tag} on {base}, {int(_image_field(tag, '{{.Size}}')) / 1e9:.1f} GB"
