# Two commands on a fresh machine:  make run  (the whole pipeline)  and  make test  (the test suite).
# make run SLEEP=1 adds notebook 09 (sleep consolidation) above the smoke preset.
# Both create .venv on first use. Override the torch install for a GPU:  make setup TORCH=torch
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch. On these machines pip takes it from a local file; elsewhere use PyTorch's
# CPU wheel index, e.g.  make setup TORCH="torch --index-url <PyTorch CPU index URL>"
TORCH ?= torch==2.13.0
PRESET ?= cpu
SLEEP ?=

.PHONY: setup run pretrain test test-fast lab clean-artefacts

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

run: setup
	$(PY) run_all.py --preset $(PRESET) $(if $(SLEEP),--sleep)

# The pretrained trunks of a preset, one per seed (trunks/<preset>/seed-<seed>/): what the arms fine-tune from when
# the preset's init_from is "trunk". Interrupted? The same command with --resume:
#   $(PY) -m revena_lib.pretrain --preset $(PRESET) --resume
pretrain: setup
	$(PY) -m revena_lib.pretrain --preset $(PRESET)

# The test command (README and CI): unit tests, the notebooks under nbval, run_all.py end to end,
# and the JupyterLab browser test.
test: setup
	$(PY) -m pytest --nbval-lax tests notebooks

test-fast: setup
	$(PY) -m pytest -m "not slow" tests

lab: setup
	$(VENV)/bin/jupyter lab notebooks

clean-artefacts:
	rm -rf data/*.bin data/meta.json trained/baseline trained/with_ltm results/results.* executed
