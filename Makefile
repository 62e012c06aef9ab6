# Two set-up commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SHARED_DATA := $(abspath ../shared/data)

# Use the local copy of the official MedMNIST files when it exists; else the official download.
ifneq ($(wildcard $(SHARED_DATA)/medmnist),)
export MEDLENS_DATA ?= $(SHARED_DATA)/medmnist
endif

.PHONY: venv demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: its CPU build; a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# Each demo run gets its own folder: a second `make demo` never overwrites the first.
DEMO_RUN := runs/demo-$(shell date +%Y%m%d-%H%M%S)

demo: venv
	$(VENV)/bin/medlens preview breastmnist --out $(DEMO_RUN)-preview.png
	$(VENV)/bin/medlens train breastmnist --recipe fast --out $(DEMO_RUN)
	@echo "run folder: $(DEMO_RUN) (metrics.json, history.csv, checkpoints/); MLflow: runs/mlflow.db"

test: venv
	$(PY) -m pytest

bench: venv
	$(PY) benchmarks/data_loading.py
	$(PY) benchmarks/train_speed.py
	$(PY) benchmarks/accuracy.py

clean:
	rm -rf $(VENV) runs .pytest_cache
