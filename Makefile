# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv and install the package with its extras on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Real CIFAR-10 images: taken from SHARED_DATA ($MASKCON_SHARED_DATA, else a shared/data folder
# beside the checkout) when it exists, otherwise downloaded by torchvision into DATA_ROOT.
DATA_ROOT ?= data
SHARED_DATA ?= $(or $(MASKCON_SHARED_DATA),../shared/data)
SEEDS ?= 1228
PRESET ?= cpu
# One folder per preset, so a quick smoke demo never mixes with the real runs.
OUT ?= runs/compare-$(PRESET)
METHODS ?= maskcon,supcon,selfcon
SWEEP_OUT ?= runs/sweep

.PHONY: install data demo test sweep notebooks clean

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

# Notebook 03 for every method and seed (papermill), then notebook 04 over the run folders.
sweep: $(STAMP) data
	$(PY) scripts/sweep.py --methods $(METHODS) --seeds $(SEEDS) --preset $(PRESET) \
		--out $(SWEEP_OUT) --data-root $(DATA_ROOT) \
		$$( [ -f $(DATA_ROOT)/cifar10/.complete ] || echo -p download true )

# Re-execute the committed notebooks in place; they save their figures into figures/.
# Notebook 04 compares the run folders under RESULTS_RUNS, for example the output folder of
# `make demo`. Without RESULTS_RUNS, a smoke sweep of two methods and two seeds is run for it.
NOTEBOOK_ENV := MASKCON_DATA_ROOT=$(abspath $(DATA_ROOT)) MASKCON_NOTEBOOK_OUTPUT=$(abspath figures)
RESULTS_RUNS ?=
notebooks: $(STAMP) data
	$(NOTEBOOK_ENV) $(PY) -m papermill notebooks/01_soft_labels.ipynb notebooks/01_soft_labels.ipynb -k python3
	$(NOTEBOOK_ENV) $(PY) -m papermill notebooks/02_special_cases.ipynb notebooks/02_special_cases.ipynb -k python3
	$(NOTEBOOK_ENV) MASKCON_RUNS_DIR=$(abspath runs/notebook-03) $(PY) -m papermill \
		notebooks/03_train_cifar.ipynb notebooks/03_train_cifar.ipynb -k python3
	$(if $(RESULTS_RUNS),,$(PY) scripts/sweep.py --methods maskcon,supcon --seeds 1228,1229 \
		--preset smoke --out runs/smoke-sweep --data-root $(DATA_ROOT))
	$(NOTEBOOK_ENV) MASKCON_RUNS_DIR=$(abspath $(or $(RESULTS_RUNS),runs/smoke-sweep)) \
		$(PY) -m papermill notebooks/04_results.ipynb notebooks/04_results.ipynb -k python3

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
