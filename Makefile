# Two commands on a fresh machine: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The torch build pip installs first; override on machines without the local wheels,
# e.g. TORCH_SPEC="torch torchvision --index-url https://download.pytorch.org/whl/cpu".
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: setup demo reproduce test bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[test,dev,s3,gcs]'
	touch $(STAMP)

demo: setup
	$(PY) -m training.demo

# The full study behind docs/RESULTS.md (hours on a CPU; DEVICE=cuda where a GPU exists).
DEVICE ?= cpu
reproduce: setup
	$(PY) -m training.reproduce --device $(DEVICE)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m benchmarks.run --out benchmarks/results.json

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) demo-out
