# The two set-up commands of the README. Everything goes into .venv; nothing is needed on the machine
# beyond python3 (ffmpeg comes from imageio-ffmpeg when no system binary exists).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test install browser clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Installs everything and renders the example catalog on the embedded default (local Ray, ./out, CPU).
demo: install
	$(VENV)/bin/s2v render manifests/example.yaml

# Installs everything and runs the whole test suite, on two workers that each take a whole test file at a time
# (module fixtures and the shared local Ray stay per worker). pytest's "no tests collected" (5) is a failure.
test: install browser
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

# The browser tests (tests/test_browser_*.py) drive Debian's chromium through chromium-driver: installed here when
# missing and this user may (root, as in CI); otherwise the tests fail saying what to install.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "the browser tests need chromium and chromium-driver (apt-get install chromium chromium-driver)" >&2; fi; \
	fi

clean:
	rm -rf $(VENV) out .s2v-work
