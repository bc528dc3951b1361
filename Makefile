# Kestrel: `make demo` and `make test` work on a fresh clone; both set everything up first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kestrel-installed
PYTEST_ARGS ?=

export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install test test-all bench lint clean

install: $(STAMP)

# Re-runs only when the dependencies change; `make install` is otherwise instant.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

test: install  ## the suite CI runs (slow checks excluded)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: install  ## every test, slow ones included
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install  ## speed, measured (never asserted in tests); run on a quiet machine
	$(PY) -m backbones --size 320 --time

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
