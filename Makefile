# Two commands on a fresh machine: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The torch build pip installs first; override on machines without the local wheels,
# e.g. TORCH_SPEC="torch torchvision --index-url https://download.pytorch.org/whl/cpu".
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
# Full Fashion-MNIST, for the demo and the study (the tests read a committed subset).
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup data demo reproduce test bench lint clean

# The environment alone: what `make test` needs (the suite reads a committed subset).
setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[test,dev,s3,gcs,dask]'
	touch $(STAMP)

# Fetch the full dataset where this machine can (as root with apt: the Debian package);
# otherwise say in one line what to run. Never fails: only the demo and the studies read it.
data:
	@if [ -n "$$ADVMIX_DATA_ROOT" ] || ls $(FASHION_MNIST)/train-images-idx3-ubyte* >/dev/null 2>&1; then \
	  true; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "fetching Fashion-MNIST: apt-get install dataset-fashion-mnist"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	    || echo "could not install dataset-fashion-mnist: make demo needs it, make test does not"; \
	else \
	  echo "Fashion-MNIST not found: run 'sudo apt-get install dataset-fashion-mnist', or set ADVMIX_DATA_ROOT to a folder of its IDX files (make demo needs it, make test does not)"; \
	fi

demo: setup data
	$(PY) -m studies.demo

# The data-scaling study behind docs/RESULTS.md (about 2.7 hours on 2 CPU cores; DEVICE=cuda
# where a GPU exists; all 60k images alone: python -m studies.reproduce --device cuda --preset
# all-data). The colour-bias sweep: python -m studies.reproduce --study sigma.
# WORKERS: training runs at once, one thread each on the CPU (studies/pool.py says what two
# gain on 2 cores); 1 on a GPU.
DEVICE ?= cpu
WORKERS ?= $(if $(filter cpu,$(DEVICE)),2,1)
reproduce: setup data
	$(PY) -m studies.reproduce --device $(DEVICE) --workers $(WORKERS)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m benchmarks.run --out benchmarks/results.json

# Style, and the layout's import rules (pyproject.toml [tool.importlinter]).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) demo-out
