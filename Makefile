# rxchain build. Every target installs what it needs into .venv first, so a clean
# clone on a fresh machine only needs python3 (3.11) and make.
SHELL      := /bin/bash
PYTHON     ?= python3
VENV       := .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed-stamp
PROTOS     := $(wildcard proto/rxchain/v1/*.proto)
GEN_STAMP  := gen/.stamp
RXCHAIN_HOME ?= $(CURDIR)/.rxchain
PYTEST_ARGS ?=

.PHONY: install proto test lint demo bench bench-scale-1m sim-sweep chaos network-up network-down clean

install: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	site="$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" && \
	  printf '%s\n%s\n%s\n' "$(CURDIR)" "$(CURDIR)/gen" "$(CURDIR)/network-config" > "$$site/rxchain-project.pth"
	printf '#!/bin/sh\nexec "%s" -m client.cli "$$@"\n' "$(CURDIR)/$(PY)" > $(VENV)/bin/rxchain
	chmod +x $(VENV)/bin/rxchain
	touch $@

proto: $(GEN_STAMP)

$(GEN_STAMP): $(STAMP) $(PROTOS)
	rm -rf gen && mkdir -p gen
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m grpc_tools.protoc -Iproto --python_out=gen --grpc_python_out=gen \
	  --mypy_out=quiet:gen --mypy_grpc_out=quiet:gen $(PROTOS)
	touch gen/rxchain/__init__.py gen/rxchain/v1/__init__.py gen/rxchain/py.typed
	touch $@

test: install proto
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install proto
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

demo: install proto
	RXCHAIN_HOME=$(RXCHAIN_HOME) $(PY) -m client.demo

network-up: install proto
	RXCHAIN_HOME=$(RXCHAIN_HOME) $(VENV)/bin/rxchain network up

network-down: install proto
	RXCHAIN_HOME=$(RXCHAIN_HOME) $(VENV)/bin/rxchain network down

bench: install proto
	$(PY) -m bench.run_all

bench-scale-1m: install proto
	RXCHAIN_SCALE_TX=1000000 $(PY) -m bench.scale_bench

sim-sweep: install proto
	RXCHAIN_SIM_SEEDS=$${RXCHAIN_SIM_SEEDS:-3000} $(PY) -m pytest -q tests/sim -p no:cacheprovider

chaos: install proto
	RXCHAIN_CHAOS_LONG=1 $(PY) -m pytest -q tests/fault -p no:cacheprovider

clean:
	rm -rf gen $(VENV) .mypy_cache .pytest_cache .ruff_cache
