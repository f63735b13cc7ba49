# The two commands README.md gives: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8000
APT_TEST_PACKAGES := victoria-metrics influxdb nftables iproute2 iperf3 irtt sockperf prometheus ethtool libssl-dev clang conntrack
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test deps venv lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel

# Builds the extension and runs a short loopback probe in `both` mode (1000 packets/s).
run: $(BIN)/python
	$(BIN)/pip install -q .
	$(BIN)/packet-flow --mode both --local-addr 127.0.0.1:$(PORT) --log-level warning \
	    --remote-addr 127.0.0.1:$(PORT) --rate 1 --duration 5

# Installs what the tests need (Debian packages, the package with its test extras), lints, tests.
deps:
	@missing=""; for p in $(APT_TEST_PACKAGES); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" \
	        || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; fi

venv: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'

lint: venv
	$(BIN)/ruff check packet_flow tests benchmarks setup.py

test: deps venv lint
	$(BIN)/python -m pytest -q tests

bench: venv
	$(BIN)/python benchmarks/bench_io.py

clean:
	rm -rf build dist *.egg-info $(VENV) packet_flow/*.so ext/_io.c

-include mk/*.mk
