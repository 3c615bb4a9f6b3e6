# Hobotnica: `make run` starts the server, `make test` runs every check.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

API_HOST ?= 127.0.0.1
API_PORT ?= 8080
SWAGGER_HOST ?= 127.0.0.1
SWAGGER_PORT ?= 8422
PYTEST_ARGS ?=

.PHONY: install system-deps run test lint format typecheck unit integrational \
	swagger-ui bench deploy clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Debian packages the tests drive for real: git, make, nginx, systemd-analyze,
# strace (which thread syncs the database).
system-deps:
	@missing=""; \
	for tool in git make nginx systemd-analyze strace; do \
		command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "Installing Debian packages for:$$missing"; \
		pkgs=$$(echo "$$missing" | sed -e 's/nginx/nginx-light/' -e 's/systemd-analyze/systemd/'); \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$pkgs; \
	fi

run: install
	$(BIN)/hobotnica serve

test: install system-deps lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: install
	$(BIN)/python -m pytest -m "not integrational" $(PYTEST_ARGS)

integrational: install system-deps
	$(BIN)/python -m pytest -m integrational $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check . deploy/switch
	$(BIN)/ruff format --check . deploy/switch

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: install
	$(BIN)/mypy
	$(BIN)/mypy --strict deploy/switch

swagger-ui: install
	$(BIN)/hobotnica swagger-ui --host $(SWAGGER_HOST) --port $(SWAGGER_PORT) \
		--api http://$(API_HOST):$(API_PORT)

bench: install system-deps
	$(BIN)/python -m bench.run_all

# Upgrade this server in place, blue-green (as root in /opt/hobotnica;
# see deploy/README.md).
deploy:
	git pull --ff-only
	$(BIN)/pip install --quiet .
	deploy/switch

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
