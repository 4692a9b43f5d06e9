# The two set-up commands of the README: `make run` (install + generate) and `make test` (install + tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROMPT ?= a cat
MODEL ?=
RUN_ARGS ?=

.PHONY: install install-test run test lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: a bare `torch` requirement would pull several GB of CUDA packages
	$(BIN)/pip install -q torch==2.13.0

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-test: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'

# Generate with MODEL (a path or a name in models/checkpoints); without one, a tiny random test checkpoint is
# written first so the whole path can be tried offline.
run: install
	@if [ -z "$(MODEL)" ] && { [ -f models/checkpoints/foci-tiny-random.safetensors ] || \
		! ls models/checkpoints/*.safetensors >/dev/null 2>&1; }; then \
		echo "no checkpoint in models/checkpoints: using a tiny random one (images will be noise)"; \
		[ -f models/checkpoints/foci-tiny-random.safetensors ] || \
			$(BIN)/foci dev make-checkpoint --tiny models/checkpoints/foci-tiny-random.safetensors; \
		$(BIN)/foci generate "$(PROMPT)" --model models/checkpoints/foci-tiny-random.safetensors \
			--styles "" --lora none --aspect 256*256 --image-number 1 $(RUN_ARGS); \
	else \
		$(BIN)/foci generate "$(PROMPT)" $(if $(MODEL),--model "$(MODEL)") $(RUN_ARGS); \
	fi

test: install-test
	$(BIN)/ruff check foci tests benchmarks
	$(BIN)/python -m pytest -q

lint: install-test
	$(BIN)/ruff check foci tests benchmarks
