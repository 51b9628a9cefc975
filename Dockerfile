# One image for every role: `bailing gateway`, `bailing worker --family ...`, `bailing init-demo`.
# docker-compose.yml picks the command; the entrypoint is the `bailing` CLI.
# BASE_IMAGE: any image with Python 3.11 and its venv module as `python3`; `make compose-check` builds
# on a local Debian bookworm (bench/compose_images.py) where no image registry is reachable.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Everything is installed into a venv: the same `python`, `pip` and `bailing` on PATH whether the base
# keeps its Python in /usr/local (python:3.11-slim) or /usr (Debian's, which refuses system-wide pip).
RUN python3 -m venv /opt/venv

WORKDIR /app

# Dependencies get their own layer, rebuilt only when pyproject.toml or constraints.txt change: the
# project's direct pins, with every transitive dependency held to the tested version by constraints.txt.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The code. Installed editable so gateway/protos.py finds proto/ next to it; the gRPC code is generated
# now, at build time, so the running (non-root) containers never write into /app.
COPY . .
RUN pip install -c constraints.txt --no-deps -e . \
    && python -m gateway.protos \
    && python -c "import gateway.api"

# Run as an unprivileged user. /models is the checkpoint volume (init-demo writes the demo models there).
RUN useradd --create-home --uid 10001 --user-group bailing \
    && mkdir -p /models \
    && chown bailing:bailing /models
USER bailing

EXPOSE 50051
ENTRYPOINT ["bailing"]
CMD ["--help"]
