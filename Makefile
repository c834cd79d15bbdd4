# The two commands: `make run` and `make test`. Both set up what they need first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the test suite drives as real peers (mosquitto as a stand-in cloud
# broker and benchmark peer, nginx for downloads, openssl, curl for the download benchmark).
TEST_DEBS := mosquitto mosquitto-clients nginx openssl curl
TRIAL_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test venv tools system-deps test-deps check-config bench clean deb

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) is missing: apt-get install python3 python3-venv"; exit 1; }
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null || $(MAKE) system-deps DEBS="python3-venv"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	# compat mode puts the checkout on sys.path, so Twisted finds twisted/plugins/ here.
	$(BIN)/pip install -q --config-settings editable_mode=compat -e '.[test]'
	touch $@

# Peers the tests run that must not share the project's dependencies: gooseBit (a hawkBit
# DDI server; FastAPI/pydantic/tortoise) in its own virtualenv, pinned.
GOOSEBIT_VERSION := 0.2.12
GOOSEBIT_STAMP := .venv-tools/goosebit/.installed-$(GOOSEBIT_VERSION)
tools: $(GOOSEBIT_STAMP)

$(GOOSEBIT_STAMP):
	rm -rf .venv-tools/goosebit
	$(PYTHON) -m venv .venv-tools/goosebit
	.venv-tools/goosebit/bin/pip install -q 'goosebit==$(GOOSEBIT_VERSION)'
	touch $@

# Installs Debian packages that are missing (DEBS=...); needs root or sudo.
system-deps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

test-deps:
	@$(MAKE) --no-print-directory system-deps DEBS="$(TEST_DEBS)"

run: venv
	mkdir -p var
	$(BIN)/twistd --nodaemon --pidfile= gateway --config conf/gateway.yaml

check-config: venv
	$(BIN)/twistd gateway --config conf/gateway.yaml --check-config

# Runs the whole suite with trial and ends with one line: "N passed, N failed".
test: venv tools test-deps
	@set -o pipefail; rm -f $(VENV)/trial.log; \
	$(BIN)/trial --reactor=asyncio $(TRIAL_ARGS) tests 2>&1 | tee $(VENV)/trial.log; status=$$?; \
	$(BIN)/python tests/summary.py $(VENV)/trial.log; exit $$status

bench: venv test-deps
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

# The .deb (docs/install.md): installs the build dependencies debian/control names, builds
# with dpkg-buildpackage and moves the results from .. to dist/. DEB_BUILD_OPTIONS=nocheck
# skips the test suite (and its build dependencies).
DEB_PROFILES := $(if $(filter nocheck,$(DEB_BUILD_OPTIONS)),nocheck)
deb:
	@$(MAKE) --no-print-directory system-deps DEBS="dpkg-dev"
	@dpkg-checkbuilddeps $(if $(DEB_PROFILES),-P$(DEB_PROFILES)) 2>/dev/null || { \
	  echo "installing the build dependencies named in debian/control"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get build-dep -y -qq \
	    --no-install-recommends $(if $(DEB_PROFILES),-P $(DEB_PROFILES)) ./ >/dev/null; }
	dpkg-buildpackage -us -uc -b $(if $(DEB_PROFILES),-P$(DEB_PROFILES))
	@mkdir -p dist; v=$$(dpkg-parsechangelog -S Version); a=$$(dpkg-architecture -qDEB_HOST_ARCH); \
	for f in gateway_$${v}_$$a.deb gateway_$${v}_$$a.buildinfo gateway_$${v}_$$a.changes; do mv -f ../$$f dist/; done; \
	ls -l dist/gateway_$${v}_$$a.deb

clean:
	rm -rf $(VENV) build dist *.egg-info _trial_temp* twisted/plugins/dropin.cache
