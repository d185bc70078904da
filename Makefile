# Two commands from a fresh clone: `make demo` and `make test`. Everything lands in .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench install browser tls-tools clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/matrix demo

# The browser tests drive Debian's Chromium (never a downloaded browser build).
browser:
	test -x /usr/bin/chromium || ! command -v apt-get >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

# The mutual-TLS test runs `openssl s_server`, a TLS stack that sends the alerts asyncio's server side drops.
tls-tools:
	command -v openssl >/dev/null || ! command -v apt-get >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl)

test: $(STAMP) browser tls-tools
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/matrix bench

clean:
	rm -rf $(VENV) build *.egg-info
