# exchange-kernel: `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# `make test` also installs the otel extra (the OpenTelemetry test needs it); `make demo` doesn't.
TEST_STAMP := $(VENV)/.installed-test-stamp
DATA   := .exchange-kernel

.PHONY: venv test lint format demo stop histories bench chaos clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,otel]'
	touch $(TEST_STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint $(TEST_STAMP)
	$(BIN)/python -m pytest -q

# Starts the dev server + paper exchange + worker in the background, runs the example strategy,
# prints the UI address. `make stop` stops the background services.
demo: $(STAMP)
	$(BIN)/python examples/demo.py

stop:
	-test -f $(DATA)/dev.pid && kill `cat $(DATA)/dev.pid` && rm -f $(DATA)/dev.pid

# Re-record the workflow histories that the replay test checks (tests/histories/).
histories: $(STAMP)
	EK_RECORD_HISTORIES=1 $(BIN)/python -m pytest -q tests/test_intents.py tests/test_held_stops.py \
		tests/test_groups.py tests/test_continue_as_new.py tests/test_cold_update.py \
		tests/test_freshness.py tests/test_brackets.py tests/test_sync_activation_split.py

bench: $(STAMP)
	$(BIN)/python bench/placement.py

# The full chaos run (docs/reliability.md): real dev server, worker process and paper exchange
# under worker kills, server restarts and exchange faults; non-zero exit on any violation.
# `make test` runs a bounded one (tests/chaos/test_chaos.py).
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos.driver --intents 300 --duration 180 --seed 1

clean:
	rm -rf $(VENV) $(DATA) .pytest_cache .ruff_cache .hypothesis
