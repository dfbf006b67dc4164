# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv and install the package with its extras on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Real CIFAR-10 images: taken from a shared/data folder beside the checkout when there is
# one, otherwise downloaded by torchvision into DATA_ROOT.
DATA_ROOT ?= data
SHARED_DATA ?= ../shared/data
OUT ?= runs/compare
SEEDS ?= 1228
PRESET ?= cpu

.PHONY: install data demo test figures clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[notebooks,test]'
	touch $(STAMP)

data:
	@if [ -f $(SHARED_DATA)/materialize_cifar10.py ]; then \
		$(PY) $(SHARED_DATA)/materialize_cifar10.py $(DATA_ROOT); \
	else \
		echo "no $(SHARED_DATA); torchvision will download CIFAR-10 into $(DATA_ROOT)"; \
	fi

# The main job: MaskCon, SupCon and SelfCon with one CPU budget on CIFARtoy (good split),
# plus the untrained floor; writes $(OUT)/comparison.md and comparison.png.
demo: $(STAMP) data
	$(PY) -m maskcon_mini.compare --preset $(PRESET) --dataset cifartoy_good \
		--data-root $(DATA_ROOT) --out $(OUT) --seeds $(SEEDS) \
		$$( [ -f $(DATA_ROOT)/cifar10/.complete ] || echo --download true )

test: $(STAMP)
	$(PY) -m pytest

figures: $(STAMP) data
	MASKCON_DATA_ROOT=$(abspath $(DATA_ROOT)) $(PY) -m maskcon_mini.figures

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
