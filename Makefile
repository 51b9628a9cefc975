# The project's commands. `make up` and `make test` need nothing but Python 3.11, pip and make.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   := .bailing/demo

.PHONY: up test lint fmt bench clean demo bench-engine bench-service bench-sampling bench-batch bench-diffusion bench-ming \
	bench-ming-image bench-ming-speech bench-parallel bench-curves bench-omp-pools bench-expert-products bench-structured bench-demo-rss \
	gpu-check fuzz soak chaos compose-check

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/bailing init-demo $(DEMO)

# The whole service on demo checkpoints: embedded Valkey + gateway + workers, until Ctrl-C.
up: $(STAMP)
	$(VENV)/bin/bailing up --dir $(DEMO)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .bailing .pytest_cache .ruff_cache

bench: $(STAMP)
	$(PY) -m bench.load

bench-engine: $(STAMP)
	$(PY) -m bench.engine

bench-service: $(STAMP)
	$(PY) -m bench.service

bench-sampling: $(STAMP)
	$(PY) -m bench.sampling

bench-batch: $(STAMP)
	$(PY) -m bench.batch

bench-diffusion: $(STAMP)
	$(PY) -m bench.diffusion

bench-ming: $(STAMP)
	$(PY) -m bench.ming

bench-ming-image: $(STAMP)
	$(PY) -m bench.ming_image

bench-ming-speech: $(STAMP)
	$(PY) -m bench.ming_speech

bench-parallel: $(STAMP)
	$(PY) -m bench.parallel

# Cost curves: tok/s against batch size 1..256, ms/token against context 256..16k, ours vs transformers.
bench-curves: $(STAMP)
	$(PY) -m bench.curves

bench-omp-pools: $(STAMP)
	$(PY) -m bench.omp_pools

bench-expert-products: $(STAMP)
	$(PY) -m bench.expert_products

# Constrained decoding (engine/structured): tok/s with a grammar vs without on the same requests, batch 1
# and 32, and where the constrained step's time goes (bench/results/structured.md).
bench-structured: $(STAMP)
	$(PY) -m bench.structured

# Resident memory of `bailing up`'s demo stack (every child's process tree), idle and after one chat
# per model, against the 3 GiB laptop target (bench/results/demo_rss.md).
bench-demo-rss: $(STAMP)
	$(PY) -m bench.demo_rss

# The gRPC contract under 10,000 generated requests and 2,000 generated media files (tests/fuzz/) on a
# real stack (Valkey, gateway, ling / ming / ming2 workers): statuses per message type in
# bench/results/fuzz.md; fails if any call got UNKNOWN / INTERNAL / no answer or a worker died.
fuzz: $(STAMP)
	$(PY) -m bench.fuzz

# The local stack (`bailing up`'s Stack) under concurrent streaming clients: every request complete,
# TTFT / ITL per minute, RSS and fds per process, KV usage back to 0 when idle (bench/results/soak.md).
# The reference run: make soak SOAK_ARGS="--streams 64 --minutes 10".
SOAK_ARGS ?=
soak: $(STAMP)
	$(PY) -m bench.soak $(SOAK_ARGS)

# Fault rounds (worker SIGKILL, gateway SIGKILL, Valkey restart, worker SIGSTOP past its heartbeat) while
# streams and 1,000-item batches run: 0 lost / duplicated items, 0 hung streams (bench/results/chaos.md).
CHAOS_ARGS ?=
chaos: $(STAMP)
	$(PY) -m bench.chaos $(CHAOS_ARGS)

# The docker-compose stack for real (needs docker + docker-compose, else exit 2; not part of `make test`):
# builds the image (on a local Debian base where no registry is reachable), `up` with docker-compose.yml
# plus docker/compose-check.yml (CPU workers), waits for health, runs a chat, a transcription and a
# batch, SIGKILLs a worker and sees its restart policy bring it back, then `down -v` of its own project.
compose-check: $(STAMP)
	$(PY) -m bench.compose_check

# On a machine with a CUDA device: the tests marked gpu (NCCL tensor parallel when there are 2+
# GPUs, FP8 loading), then the GPU benchmarks (bf16; the engine on Ling-mini-2.0's real shapes).
gpu-check: $(STAMP)
	$(VENV)/bin/pytest -m gpu -ra
	$(PY) -m bench.engine --device cuda --real-config ling-mini --quick
	$(PY) -m bench.ming_image --device cuda --dtype bfloat16
