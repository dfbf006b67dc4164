# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv and install the package with its extras on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA_ROOT ?= data
OUT ?= runs

.PHONY: install demo test figures clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[notebooks,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m maskcon_mini.demo

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
