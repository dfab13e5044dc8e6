# Quick start on a fresh machine: `make demo`, `make test`. Both create .venv and install the pinned
# requirements when they are missing (Python 3.11 required).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-nodeps.txt | cksum | cut -d' ' -f1)
TORCH_STAMP := $(VENV)/.installed-torch-$(shell cat requirements-torch.txt requirements-models.txt requirements-models-nodeps.txt | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: venv venv-torch browser test test-fast demo clean-venv

venv: $(STAMP)

# The PyTorch engine's requirements and the library models' (torchvision, timm): for the tests (parity with
# TensorFlow, library models), not for `make demo`.
venv-torch: $(TORCH_STAMP)

$(TORCH_STAMP): $(STAMP) requirements-torch.txt requirements-models.txt requirements-models-nodeps.txt
	$(BIN)/python -m pip install --quiet -r requirements-torch.txt -r requirements-models.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-models-nodeps.txt
	rm -f $(VENV)/.installed-torch-*
	touch $@

$(STAMP): requirements.txt requirements-nodeps.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required (scikit-image 0.20 has no wheels for newer versions); set PYTHON=/path/to/python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-nodeps.txt
	rm -f $(VENV)/.installed-[0-9]*
	touch $@

# Headless Chromium and its driver for the report's browser test (tests/test_report.py), from the system packages
# (Debian names); installed as root where missing. Elsewhere the test skips, or fails with REPRO_REQUIRE_BROWSER=1.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	else echo "note: the report's browser test needs chromium and chromedriver: apt-get install -y chromium chromium-driver (as root)" >&2; fi

test: venv venv-torch browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: venv venv-torch browser
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

demo: venv
	$(BIN)/python scripts/demo.py

clean-venv:
	rm -rf $(VENV)
