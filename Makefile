# steprune — `make help` lists the targets. Every target installs what it needs by itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch is installed first when no torch is present; a GPU user sets TORCH_SPEC
# to the build they want (or installs torch into the venv before the first `make`).
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
LOCK := requirements.lock
LATEST_VENV ?= .venv-latest
LMMS_VENV ?= .venv-lmms
LMMS_PY := $(LMMS_VENV)/bin/python
LMMS_STAMP := $(LMMS_VENV)/.installed
SWEEP ?= sweeps/stepprune_lambda_gamma_tau.yaml
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install lock test-latest test-lmms test test-all lint format base train sweep ablate bench bench-selector eval mlflow-ui clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-15s\033[0m %s\n", $$1, $$2}'

# The lock pins every dependency but torch (pip constraints): a fresh machine gets the tested set, not
# whatever was released this morning. pyproject.toml keeps the compatible ranges for other environments.
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -c $(LOCK) -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install steprune with its dev tools at the locked versions (torch CPU build unless one is present)

# Dependency names from pyproject.toml without their version ranges (test-latest ignores the upper bounds).
DEP_NAMES = $(PYTHON) -c "import re, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
	deps = p['dependencies'] + p['optional-dependencies']['dev']; \
	print(' '.join(re.split(r'[<>=!~;, ]', d)[0] for d in deps if not d.startswith('torch>')))"

lock: ## re-resolve the newest versions pyproject.toml allows in a scratch venv and write requirements.lock (then run make test)
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q "$(TORCH_SPEC)"
	.venv-lock/bin/python -m pip install -q -e ".[dev]"
	{ sed -n '/^#/p' $(LOCK); .venv-lock/bin/python -m pip freeze --exclude-editable | grep -viE '^(torch|nvidia-|triton)=='; } > $(LOCK).new
	mv $(LOCK).new $(LOCK) && rm -rf .venv-lock && rm -f $(STAMP)
	@echo "requirements.lock rewritten; run make test (it reinstalls .venv from the new lock)"

test-latest: ## the fast suite in a separate venv with the newest release of every dependency (no lock, no upper bounds; torch stays TORCH_SPEC)
	rm -rf $(LATEST_VENV) && $(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade $$($(DEP_NAMES))
	$(LATEST_VENV)/bin/python -m pip install -q --no-deps -e .
	@echo "== newest releases under test ==" && $(LATEST_VENV)/bin/python -m pip list --format=freeze 2>/dev/null \
		| grep -iE '^(torch|transformers|lightning|torchmetrics|jsonargparse|optuna|mlflow|datasets|tokenizers|safetensors|pillow|numpy|rich|pyyaml|huggingface.hub|pytest)=='
	$(LATEST_VENV)/bin/python -m pytest -q $(ARGS); rc=$$?; echo "== test-latest exit code $$rc =="; exit $$rc

# lmms-eval's own venv: requirements.lock less the two pins lmms-eval 0.7.3 cannot take (filelock 4 breaks its CLI,
# wandb needs protobuf<7), tests/lmms/constraints.txt, and torch held at the build installed (a constraint, so pip
# never swaps in a CUDA build). Then two uninstalls: torchvision (every wheel links CUDA libraries; with a CPU torch
# `import torchvision` fails and takes `from transformers import AutoProcessor` down) and latex2sympy2 (its top-level
# `tests` package shadows ours; only lmms-eval's math tasks use it).
$(LMMS_STAMP): pyproject.toml $(LOCK) tests/lmms/constraints.txt
	@test -x $(LMMS_PY) || $(PYTHON) -m venv $(LMMS_VENV)
	@$(LMMS_PY) -c "import torch" 2>/dev/null || $(LMMS_PY) -m pip install -q "$(TORCH_SPEC)"
	{ grep -vE '^(filelock|protobuf)==' $(LOCK); $(LMMS_PY) -c "import torch; print('torch==' + torch.__version__)"; } > $(LMMS_VENV)/lock.txt
	$(LMMS_PY) -m pip install -q -c $(LMMS_VENV)/lock.txt -c tests/lmms/constraints.txt -e ".[dev,lmms]"
	$(LMMS_PY) -m pip uninstall -y -q torchvision latex2sympy2
	@touch $(LMMS_STAMP)

# Not in `make test` / CI: the venv takes ~5 min to build and the tests ~1-2 min (README, "lmms-eval").
# STEPRUNE_REQUIRE_LMMS=1 turns the tests' lmms-eval skip into a failure: this target never passes on skips.
test-lmms: $(LMMS_STAMP) ## the lmms-eval plugin end to end, offline, in its own venv .venv-lmms (slow tests included)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 STEPRUNE_REQUIRE_LMMS=1 \
		$(LMMS_PY) -m pytest -q -m "slow or not slow" tests/lmms $(ARGS)

test: $(STAMP) ## run the fast test suite (what CI runs)
	$(PY) -m pytest -q $(ARGS)

test-all: $(STAMP) ## run every test, the slow ones included
	$(PY) -m pytest -q -m "not gpu" $(ARGS)

lint: $(STAMP) ## ruff check
	$(VENV)/bin/ruff check .

format: $(STAMP) ## ruff format + autofix
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

# OpenMP's default wait policy is the fastest on cores of your own (session 8, 2 cores: a selector training step
# 0.74-0.93 s against 1.45 s with OMP_WAIT_POLICY=PASSIVE, the base build 17:46 against 18:43; same weights bit for bit).
# When other jobs share the cores, export OMP_WAIT_POLICY=PASSIVE: spinning threads then made training 3-4x slower.
base: $(STAMP) ## build (or reuse) the tiny LLaVA of the built-in world in artifacts/base (ARGS=--force rebuilds)
	$(PY) -m steprune.cli base $(ARGS)

train: $(STAMP) ## build/reuse the base, train StepPrune on the built-in world (resumes), compare with every baseline
	$(PY) -m steprune.recipes.make_train $(ARGS)

sweep: $(STAMP) ## run an Optuna sweep (SWEEP=sweeps/....yaml), resumable
	$(PY) -m steprune.recipes.build_base
	$(PY) -m steprune.sweeps.runner --config $(SWEEP) $(ARGS)

ablate: $(STAMP) ## run the Table 4 ablation grid over seeds
	$(PY) -m steprune.recipes.build_base
	$(PY) -m steprune.sweeps.ablation --config $(or $(ABLATION),sweeps/ablation_table4.yaml) $(ARGS)

bench: $(STAMP) ## FLOPs + prefill latency of every method at 192/128/64 tokens (ARGS="--config llava-7b --flops-only" on a CPU)
	$(PY) -m steprune.eval.bench $(ARGS)

bench-selector: $(STAMP) ## StepPrune's selector FLOPs + time against the pruned prefill, LLaVA-1.5-7B widths
	$(PY) -m steprune.eval.selector_cost $(ARGS)

.PHONY: bench-scaling
bench-scaling: $(STAMP) ## selection time/FLOPs/memory of every method as N grows, LLaVA-1.5-7B widths (ARGS="--ns 144,576 --batches 1" on a CPU)
	$(PY) -m steprune.eval.scaling $(ARGS)

.PHONY: bench-gpu
bench-gpu: $(STAMP) ## on a CUDA machine: the LLaVA-1.5-7B Table-3 protocol (bf16) + the scaling benchmark, < 10 min, reports/*_gpu.*
	$(PY) -m steprune.eval.bench_gpu $(ARGS)

mlflow-ui: $(STAMP) ## open the MLflow UI on the project's tracking database
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlruns.db --host 127.0.0.1 --port 5000

clean: ## remove caches (keeps .venv and artifacts/)
	rm -rf .pytest_cache .ruff_cache lightning_logs
