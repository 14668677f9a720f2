# Every target creates or reuses .venv and installs what it needs (a fresh machine has nothing).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mmfuse-installed
# The demo needs only the core; the tests also need the search, serve and export extras.
DEV_STAMP := $(VENV)/.mmfuse-dev-installed

.PHONY: demo test bench setup clean

setup: $(DEV_STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(DEV_STAMP)

# The main job: train on easy-VQA with the default config, evaluate on the official test split.
demo: $(STAMP)
	$(VENV)/bin/mmfuse train configs/easy_vqa.yaml --set train.progress_bar=false

test: $(DEV_STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/easy_vqa.py

clean:
	rm -rf runs .mmfuse_cache
