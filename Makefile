# The two commands a newcomer needs; each sets itself up on a fresh machine.
#   make demo   run the sports-betting demo on the embedded broker
#   make test   run the whole test suite (what CI runs)
#   make test-fast   the broker-free tests only (seconds), for the development loop
.PHONY: demo test test-fast lint bench clean

VENV ?= .venv
PYTEST_ARGS ?=
# The suite waits on brokers, timeouts and clients far more than it computes: two workers (each
# with its own embedded broker; a test file stays on one worker) halve its time on two cores.
TEST_WORKERS ?= 2

demo:
	@scripts/bootstrap.sh
	$(VENV)/bin/edgebridge demo

test:
	@scripts/bootstrap.sh --test
	$(VENV)/bin/ruff check bridge protocols tests bench fuzz
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast:
	@scripts/bootstrap.sh --test
	$(VENV)/bin/pytest -m "not broker" $(PYTEST_ARGS)

lint:
	$(VENV)/bin/ruff check bridge protocols tests bench fuzz
	$(VENV)/bin/ruff format --check bridge protocols tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
