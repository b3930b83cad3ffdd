# The one place that defines the commands; README, CI and developers all use these.
#   make demo    the main job on a local demo PACS (installs what is missing)
#   make test    every test tier plus the linters (installs what is missing)
#   make bench   the benchmarks (apart from the tests)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
APT_PACKAGES := orthanc dcmtk redis-server docker-compose

.PHONY: install system-deps demo test unit integration faults lint bench clean

# The runtime dependencies at the versions requirements.lock pins (the image's), so tests run
# what the image ships and a new release on PyPI cannot change a run (the lock's hashes are
# for the image's platforms: here the pins alone, as constraints).
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	grep -E '^[A-Za-z0-9]' requirements.lock | sed 's/ .*//' > $(VENV)/constraints.txt
	$(PY) -m pip install --quiet -e ".[dev]" -c $(VENV)/constraints.txt
	touch $@

install: system-deps $(VENV)/.installed

# Debian packages the demo and the tests run for real: Orthanc and DCMTK (PACS servers),
# redis-server (a private broker for tests), docker-compose (to validate the compose file).
system-deps:
	@scripts/system-deps.sh $(APT_PACKAGES)

demo: install
	@$(PY) -m demo.run

unit: install
	$(PY) -m pytest tests/unit -q -p no:cacheprovider

integration: install
	$(PY) -m pytest tests/integration -q -p no:cacheprovider

faults: install
	$(PY) -m pytest tests/faults -q -p no:cacheprovider

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint Dockerfile
	docker-compose --env-file .env.example -f docker-compose.yml config -q

test: install lint
	$(PY) -m pytest -q -p no:cacheprovider

bench: install
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache state output
