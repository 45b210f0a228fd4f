# Every install step of the project lives here.
#   make demo   - a JupyterHub on 127.0.0.1 spawning through a local reference Outpost
#   make test   - install everything and run lint and the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VENV5 := .venv-jh5
PY := $(VENV)/bin/python
JH6 := jupyterhub>=6.1,<7
JH5 := jupyterhub>=5.3,<6
export PATH := $(CURDIR)/node_modules/.bin:$(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install system-deps venv venv-jh5 node test test-jh6 test-jh5 lint demo docs bench bench-jobs clean

install: system-deps venv node

# Debian packages: only what is missing, so a prepared machine needs no root
system-deps:
	@missing=""; \
	command -v node >/dev/null || missing="$$missing nodejs"; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	[ -x /usr/sbin/sshd ] || missing="$$missing openssh-server"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(JH6)" -e ".[test,docs,lint,bench]"
	touch $@

venv: $(VENV)/.installed

$(VENV5)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV5)
	$(VENV5)/bin/python -m pip install -q --upgrade pip
	$(VENV5)/bin/python -m pip install -q "$(JH5)" -e ".[test]"
	touch $@

venv-jh5: $(VENV5)/.installed

node_modules/.installed: package.json
	npm install --no-audit --no-fund --silent
	touch $@

node: node_modules/.installed

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The README's test command: lint, docs, the whole suite on JupyterHub 6, the suite on 5.x
test: install venv-jh5 lint docs test-jh6 test-jh5

test-jh6: install
	$(PY) -m pytest -p no:cacheprovider

test-jh5: install venv-jh5
	PATH=$(CURDIR)/$(VENV5)/bin:$$PATH $(VENV5)/bin/python -m pytest -p no:cacheprovider -m "not slow"

demo: install
	$(PY) examples/demo/run_demo.py

docs: venv
	$(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

bench: install
	$(PY) benchmarks/run.py

bench-jobs: install
	PATH=$(CURDIR)/node_modules/.bin:$$PATH $(PY) benchmarks/jobs.py

clean:
	rm -rf $(VENV) $(VENV5) node_modules docs/_build
