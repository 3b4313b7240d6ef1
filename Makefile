# Two commands on a fresh clone: `make run` (set up, then `dvc repro` on the demo data) and
# `make test` (set up, then the test suite). The venv is rebuilt when requirements.txt changes
# or another interpreter is picked.
# The venv's interpreter: the distribution's Python 3.11 where it has one that can make a venv,
# else python3. Debian and Ubuntu build theirs with profile-guided and link-time optimisation into
# one static binary; pyenv's build (`--enable-shared`, no `--enable-optimizations`) has neither,
# and the stages took a quarter more CPU on it (docs/performance.md). `make PYTHON=...` overrides.
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell for py in /usr/bin/python3.11 python3; do $$py -c 'import ensurepip, venv' 2>/dev/null && { command -v $$py; break; }; done)
PYTHON := $(or $(PYTHON),python3)
endif
VENV := .venv
# Named after the interpreter: a venv made by another one is made anew, not updated.
STAMP := $(VENV)/.installed-$(subst /,_,$(PYTHON))
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup system-deps run test lint format clean exps pipeline check-lock

setup: $(STAMP)

$(STAMP): requirements.txt
	if ls $(VENV)/.installed* >/dev/null 2>&1 && [ ! -e $(STAMP) ]; then rm -rf $(VENV); fi
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	# GPU figures in MLflow's system metrics, where there is an NVIDIA GPU to measure.
	if command -v nvidia-smi >/dev/null 2>&1; then $(VENV)/bin/pip install --quiet nvidia-ml-py==13.615.71; fi
	touch $(STAMP)

run: $(STAMP)
	dvc repro

system-deps:
	bash scripts/system-deps.sh

test: $(STAMP) system-deps
	python -m pytest

# `dvc exp show` fit for a terminal: the test metrics, the best epoch and the params that differ
# (no files' hashes, no figures of the training set; DVC matches --drop at the start of a name).
EXPS_DROP := .*/|(accuracy|loss|learning_rate|epochs_run|test_macro_precision|test_macro_recall)$$
exps:
	dvc exp show --only-changed --precision 4 --drop '$(EXPS_DROP)' $(EXPS_FLAGS)

# dvc.yaml's cmd, params and deps, written from the pipeline's description (imgclf/pipeline.py).
pipeline: $(STAMP)
	python -m imgclf.pipeline

lint: $(STAMP)
	ruff check .
	ruff format --check .

# CI: the committed dvc.lock was made by this code and these params (after a change: dvc repro,
# then commit dvc.lock and reports/).
check-lock: $(STAMP)
	python scripts/check_lock.py

format: $(STAMP)
	ruff check --fix .
	ruff format .

clean:
	rm -rf $(VENV)
