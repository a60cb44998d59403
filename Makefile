# One-command setup: `make demo` and `make test` create .venv on first use and reuse it after.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.qgnet-installed

.PHONY: setup test demo bench lint clean-cache device-kit

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "cython" "numpy" "setuptools>=68" "wheel"
	$(PY) -m pip install --quiet "torch>=2.4" "torchvision>=0.19"
	$(PY) -m pip install --quiet -e ".[dev]"
	@$(PY) -m pip install --quiet --no-build-isolation "fast-slic>=0.4" \
	  && echo "setup: fast-slic built and installed" \
	  || echo "setup: WARNING fast-slic failed to build; the numba and skimage SLIC backends will be used instead"
	@touch $(STAMP)

test: setup
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q tests

demo: setup
	$(PY) -m cli.demo

bench: setup
	$(PY) -m bench.run_all

lint: setup
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check pipeline model cli tests bench

clean-cache:
	rm -rf cache/*/

# Wheels a lent GPU machine lacks (Python 3.12, manylinux x86-64) into .whl/ (docs/gpu.md)
device-kit:
	$(PYTHON) -m bench.device_kit
