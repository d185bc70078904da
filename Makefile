# Two commands from a fresh clone: `make demo` and `make test`. Everything lands in .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench install browser system clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench,redis]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/matrix demo

# Real components the tests start themselves, from Debian's packages: Chromium for the
# browser tests (never a downloaded browser build), nginx for the reverse-proxy tests,
# openssl for the mutual-TLS test (`openssl s_server` sends the TLS alerts asyncio's server drops),
# redis-server for the Redis engine's tests (each test run starts its own, persistence off),
# postgresql for the conversation store's tests (each run starts its own cluster in a temporary directory).
SYSTEM_PACKAGES := $(if $(wildcard /usr/bin/chromium),,chromium) $(if $(wildcard /usr/sbin/nginx),,nginx-light) \
	$(if $(wildcard /usr/bin/openssl),,openssl) $(if $(wildcard /usr/bin/redis-server),,redis-server) \
	$(if $(wildcard /usr/lib/postgresql/*/bin/postgres),,postgresql)

system:
	test -z "$(strip $(SYSTEM_PACKAGES))" || ! command -v apt-get >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES))

browser: system

test: $(STAMP) system
	$(BIN)/python -m pytest -q

bench: $(STAMP) system  # the workers phase and @redis combinations run a redis-server
	$(BIN)/matrix bench

clean:
	rm -rf $(VENV) build *.egg-info
