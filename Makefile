# The two commands README.md gives: `make run` and `make test` (see docs/development.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8000
APT_TEST_PACKAGES := victoria-metrics influxdb nftables iproute2 iperf3 irtt sockperf prometheus ethtool libssl-dev clang conntrack dnsmasq-base curl
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run check-build test deps venv lint bench clean FORCE

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel

# The package installed in place with its test extras; done again only when what the build
# reads changed (pyproject.toml, setup.py, ext/) or the built extension is missing.
INSTALLED := $(VENV)/.installed
$(INSTALLED): $(BIN)/python pyproject.toml setup.py $(wildcard ext/*.pyx ext/*.pxi ext/includes/*) \
              $(if $(wildcard packet_flow/_io*.so),,FORCE)
	$(BIN)/pip install -q -e '.[test]'
	@touch $@
FORCE:

RUN_RECORDS ?= make-run.jsonl
RUN_SECONDS ?= 5
RUN_INSTALL ?= $(BIN)/pip install -q . && rm -f $(INSTALLED)

# What the build needs (C compiler, Python headers, venv, OpenSSL headers): checked first;
# when something is missing, mk/check-build.sh prints the one apt-get command and make stops.
check-build:
	@PYTHON=$(PYTHON) sh mk/check-build.sh

# Builds the extension and runs a short loopback probe in `both` mode (1000 packets/s, 5 s),
# keeping its records in $(RUN_RECORDS) for `packet-flow report`.
run: check-build
	@$(MAKE) --no-print-directory $(BIN)/python
	$(RUN_INSTALL)
	@rm -f $(RUN_RECORDS)
	$(BIN)/packet-flow --mode both --local-addr 127.0.0.1:$(PORT) --log-level warning \
	    --remote-addr 127.0.0.1:$(PORT) --rate 1 --duration $(RUN_SECONDS) --output console,jsonl:$(RUN_RECORDS)
	@echo
	@echo "This run's records are in $(RUN_RECORDS). Look at them with:"
	@echo "  $(BIN)/packet-flow report $(RUN_RECORDS)"
	@echo "  $(BIN)/pip install -q '.[plot]' && $(BIN)/packet-flow report $(RUN_RECORDS) -o run.png"
	@echo "More in README.md, 'Common tasks'."

# Installs what the tests need (Debian packages, the package with its test extras), lints, tests.
deps:
	@missing=""; for p in $(APT_TEST_PACKAGES); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" \
	        || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; fi

venv: $(INSTALLED)

lint: $(INSTALLED)
	$(BIN)/ruff check packet_flow tests benchmarks setup.py

test: deps venv lint
	$(BIN)/python -m pytest -q tests

bench: venv
	$(BIN)/python benchmarks/bench_io.py

clean:
	rm -rf build dist *.egg-info $(VENV) packet_flow/*.so ext/_io.c

-include mk/*.mk
