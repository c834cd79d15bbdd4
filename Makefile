# The two commands: `make run` and `make test`. Both set up what they need first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the test suite drives as real peers (mosquitto as a stand-in cloud
# broker and benchmark peer, nginx for downloads, openssl, curl for the download benchmark,
# prometheus + promtool scraping /metrics, nftables for per-app byte accounting, chromium
# to load the admin status page headless, podman, runc, skopeo, umoci, docker-registry,
# busybox-static for container apps, dpkg-repack for the self-update's rollback, tinyproxy as
# the HTTP proxy of gateway.proxy (started by the test on its own port), node/npm for
# Azurite and MQTT.js when node is not there yet, fuse3 for bench/powercut.py's file system).
TEST_DEBS := mosquitto mosquitto-clients nginx openssl curl prometheus nftables chromium \
	podman runc skopeo umoci docker-registry busybox-static uidmap slirp4netns fuse-overlayfs fuse3 dpkg-repack tinyproxy \
	$(if $(shell command -v node npm 2>/dev/null | sed -n 2p),,nodejs npm)
TRIAL_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test venv tools-venv system-deps test-deps check-config bench clean deb

venv: $(STAMP)

# A separate venv for test peers that pin their own dependencies (ministack pins botocore):
# tests/twin/ministack.py and tests/uploads/realservers.py start ministack from it on
# 127.0.0.1. The Azure Blob emulator Azurite (npm) goes in the same directory. mfusepy (ctypes
# bindings for libfuse 3) runs bench/powercutfs.py, the file system that forgets at a power cut.
TOOLS := .venv-tools
# gooseBit (a hawkBit DDI server for tests/fleet) in a virtualenv of its own under it, pinned.
GOOSEBIT_VERSION := 0.2.12
GOOSEBIT_STAMP := $(TOOLS)/goosebit/.installed-$(GOOSEBIT_VERSION)
TOOLS_REQUIREMENTS := ministack==1.5.33 boto3==1.43.106 mfusepy==3.1.1
AZURITE_VERSION := 3.35.0
tools-venv: $(TOOLS)/.installed $(TOOLS)/.azurite-$(AZURITE_VERSION) $(GOOSEBIT_STAMP)

$(TOOLS)/.installed: Makefile
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q $(TOOLS_REQUIREMENTS)
	touch $@

$(STAMP): setup.cfg pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) is missing: apt-get install python3 python3-venv"; exit 1; }
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null || $(MAKE) system-deps DEBS="python3-venv"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	# compat mode puts the checkout on sys.path, so Twisted finds twisted/plugins/ here.
	$(BIN)/pip install -q --config-settings editable_mode=compat -e '.[test]'
	touch $@

$(GOOSEBIT_STAMP):
	rm -rf .venv-tools/goosebit
	$(PYTHON) -m venv .venv-tools/goosebit
	.venv-tools/goosebit/bin/pip install -q 'goosebit==$(GOOSEBIT_VERSION)'
	touch $@

# Whether systemd runs this machine (then installing a package that ships a service starts it).
SYSTEMD_RUNNING ?= $(shell [ -d /run/systemd/system ] && echo yes)

# Installs Debian packages that are missing (DEBS=...); needs root or sudo. Installing
# mosquitto under systemd starts its service on 127.0.0.1:1883, make run's port; the tests
# start mosquittos of their own, so a service this installed is stopped and disabled again.
system-deps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ -n "$$(dpkg --audit 2>/dev/null)" ]; then $(SUDO) dpkg --configure -a >/dev/null; fi; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null || exit 1; \
	  if [ "$(SYSTEMD_RUNNING)" = yes ] && [[ " $$missing " == *" mosquitto "* ]]; then \
	    echo "stopping and disabling the mosquitto service the package started (it holds 127.0.0.1:1883, make run's port; the tests start their own)"; \
	    $(SUDO) systemctl disable --now mosquitto >/dev/null 2>&1 || echo "make: could not disable the mosquitto service: make run needs 127.0.0.1:1883"; \
	  fi; \
	fi

# MQTT.js (npm), which tests/broker/test_mqttjs.py runs against a real gateway, pinned.
MQTTJS_VERSION := 5.16.0
MQTTJS_STAMP := $(TOOLS)/.mqttjs-$(MQTTJS_VERSION)

test-deps: $(MQTTJS_STAMP)
	@$(MAKE) --no-print-directory system-deps DEBS="$(TEST_DEBS)"

# npm (from TEST_DEBS) is needed first.
$(TOOLS)/.azurite-$(AZURITE_VERSION):
	@$(MAKE) --no-print-directory system-deps DEBS="$(TEST_DEBS)"
	mkdir -p $(TOOLS)
	npm install --prefix $(TOOLS) --no-audit --no-fund --loglevel=error azurite@$(AZURITE_VERSION)
	touch $@

# npm (from TEST_DEBS) is needed first.
$(MQTTJS_STAMP):
	@$(MAKE) --no-print-directory system-deps DEBS="$(TEST_DEBS)"
	mkdir -p $(TOOLS)
	npm install --prefix $(TOOLS) --no-audit --no-fund --loglevel=error mqtt@$(MQTTJS_VERSION)
	touch $@

run: venv
	mkdir -p var
	$(BIN)/twistd --nodaemon --pidfile= gateway --config conf/gateway.yaml

check-config: venv
	$(BIN)/twistd gateway --config conf/gateway.yaml --check-config

# Checks for import cycles, type-checks gateway/ with mypy (config in pyproject.toml), looks
# for unused imports and undefined names (flake8's pyflakes checks only), runs
# the whole suite with trial and ends with one line: "N passed, N failed" (the line before it
# says "N skipped" when tests were skipped). Type and flake8 errors fail the target too, but trial still runs and the
# summary still comes last. The checkout's modules are byte-compiled first: the suite starts
# hundreds of interpreters (gateways, gatewayctl, writers), and where PYTHONDONTWRITEBYTECODE
# is set none of them would keep what it compiled (about 0.3 s more each start).
test: venv tools-venv test-deps
	$(BIN)/python tests/importcycles.py gateway
	$(BIN)/python -m compileall -q gateway twisted tests bench > /dev/null
	@set -o pipefail; rm -f $(VENV)/trial.log; \
	echo "$(BIN)/mypy gateway"; $(BIN)/mypy gateway; typed=$$?; \
	echo "$(BIN)/flake8 --select=F gateway tests bench debian twisted"; \
	$(BIN)/flake8 --select=F gateway tests bench debian twisted; flaked=$$?; \
	$(BIN)/trial --reactor=asyncio $(TRIAL_ARGS) tests 2>&1 | tee $(VENV)/trial.log; status=$$?; \
	if [ $$typed != 0 ]; then echo "make: mypy found type errors in gateway/ (above): the target fails"; status=1; fi; \
	if [ $$flaked != 0 ]; then echo "make: flake8 found unused or undefined names (above): the target fails"; status=1; fi; \
	$(BIN)/python tests/summary.py $(VENV)/trial.log; exit $$status

bench: venv tools-venv test-deps
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
	rm -rf $(VENV) $(TOOLS) build dist *.egg-info _trial_temp* .mypy_cache twisted/plugins/dropin.cache
