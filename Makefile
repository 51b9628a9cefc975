# The project's commands. `make up` and `make test` need nothing but Python 3.11, pip and make.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   := .bailing/demo

.PHONY: up test lint fmt bench clean demo bench-engine bench-service bench-sampling bench-batch bench-diffusion bench-ming \
	bench-ming-image bench-ming-speech bench-parallel bench-curves bench-omp-pools bench-expert-products gpu-check

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

# On a machine with a CUDA device: the tests marked gpu (NCCL tensor parallel when there are 2+
# GPUs, FP8 loading), then the GPU benchmarks (bf16; the engine on Ling-mini-2.0's real shapes).
gpu-check: $(STAMP)
	$(VENV)/bin/pytest -m gpu -ra
	$(PY) -m bench.engine --device cuda --real-config ling-mini --quick
	$(PY) -m bench.ming_image --device cuda --dtype bfloat16
