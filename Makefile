# Two set-up commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SHARED_DATA := $(abspath ../shared/data)

# Use the local copy of the official MedMNIST files when it exists; else the official download.
ifneq ($(wildcard $(SHARED_DATA)/medmnist),)
export MEDLENS_DATA ?= $(SHARED_DATA)/medmnist
endif

.PHONY: venv browser postgres demo test bench clean

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
	@echo "run folder: $(DEMO_RUN) (report.html, metrics.json, history.csv, checkpoints/); MLflow: runs/mlflow.db"

# The browser tests (report and upload page) drive Debian's Chromium with Playwright; never
# `playwright install`, which downloads a browser. Installed with apt-get when missing and root
# (CI); otherwise those tests skip with a reason, except under CI=true, where they fail.
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "could not install chromium: the browser tests will not pass"; \
	  else echo "chromium is missing and cannot be installed here (not root): the browser tests skip"; fi; \
	fi

# The shared-study test of `medlens tune` starts a throw-away PostgreSQL server from Debian's
# postgresql package (initdb + pg_ctl in a temporary folder, on 127.0.0.1). Installed with
# apt-get when missing and root (CI); otherwise that test skips with a reason, except under
# CI=true, where it fails.
postgres:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
	      || echo "could not install postgresql: the shared-study tune test will not pass"; \
	  else echo "postgresql is missing and cannot be installed here (not root): the shared-study tune test skips"; fi; \
	fi

test: venv browser postgres
	$(PY) -m pytest

bench: venv
	$(PY) benchmarks/data_loading.py
	$(PY) benchmarks/train_speed.py
	$(PY) benchmarks/accuracy.py

clean:
	rm -rf $(VENV) runs .pytest_cache
