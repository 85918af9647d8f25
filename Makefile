# anchorlake: two commands on a new machine (Python 3.11, Node 20, the package registries).
#   make demo   set up, start the embedded default, run the main job on the sample data
#   make test   set up, start SeaweedFS and anvil on free loopback ports, run every test
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP_PY := $(VENV)/.installed
STAMP_NODE := node_modules/.installed
ARTIFACT := anchoring/build/contracts.json

.PHONY: setup demo test unit lint bench clean lock

setup: $(STAMP_PY) $(STAMP_NODE) $(ARTIFACT)

$(STAMP_PY): requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) is required"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e . --config-settings editable_mode=compat
	touch $@

# --ignore-scripts: anvil's binary comes from its platform package; no install script downloads anything.
$(STAMP_NODE): package.json package-lock.json
	npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

$(ARTIFACT): $(STAMP_PY) $(STAMP_NODE) $(wildcard anchoring/contracts/*.sol) anchoring/solc.cjs
	$(PY) -m anchoring.compile

demo: setup
	$(VENV)/bin/anchorlake demo

test: setup chromium
	$(PY) -m pytest

# The page test (tests/test_page.py) drives Debian's Chromium through playwright-core, which
# downloads no browser of its own. Installed once; the check alone when it is there.
.PHONY: chromium
chromium:
	@command -v chromium >/dev/null || { apt-get update && apt-get install -y --no-install-recommends chromium; }

unit: setup
	$(PY) -m pytest -m unit -q

lint: setup
	$(VENV)/bin/ruff check anchorlake pipeline anchoring dags tests bench
	$(VENV)/bin/mypy

bench: setup
	@ls bench/*.py >/dev/null 2>&1 && for b in bench/*.py; do $(PY) $$b; done || echo "no benchmarks yet"

lock:
	$(PY) -m pip freeze --exclude-editable | sed '1i # Full pinned environment for anchorlake (Python 3.11); regenerate: make lock' > requirements.txt

clean:
	rm -rf $(VENV) node_modules anchoring/build .anchorlake .pytest_cache
