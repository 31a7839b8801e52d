# make demo: deploy the example to a local lab fleet.  make test: lint, type-check, test.
# Both install what they need first (as root on Debian: apt packages, then .venv).
# A test that needs what is missing fails; to skip those instead, name what they need:
# make pytest NIX_HIVE_ALLOW_SKIP=chromium (tests/conftest.py: needs; docs/development.md).

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# curl and nginx: pull mode's lab cache (tests/pullcache.py), where nginx runs in a lab host's
# namespace with the test's own configuration; installing it starts no nginx (a policy-rc.d,
# where the machine has none, keeps Debian's postinst from starting the system's own).
APT_PACKAGES := nix-bin openssh-server openssh-client iproute2 sudo util-linux util-linux-extra jq python3 git make python3-venv \
  shellcheck debootstrap graphviz curl nginx
# For the main test run only (tests/matrix.py installs APT_PACKAGES in its trees, not this): the
# timeline's render in a real browser (tests/test_timeline.py), about 480 MB
APT_BROWSER := chromium
# Debian's Nix runs single-user as root; without a reachable cache every build would wait
# for cache.nixos.org, so the lab, the tests and the demo use no substituters: NIX_CONFIG is
# defined once, in tests/constants.py.  The demo and the benchmarks run as modules from here.
WITH_NIX := NIX_CONFIG="$$(python3 -m tests.constants)"

.PHONY: setup apt venv host-tree test lint typecheck pytest demo demo-flake demo-down bench bench-fleet bench-scale bench-keys bench-diff bench-pull bench-runner bench-eval test-matrix clean

setup: apt venv

apt:
	@missing=""; for p in $(APT_PACKAGES) $(APT_BROWSER); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  policy=""; if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\n# nix-hive make apt: no service starts\nexit 101\n' > /usr/sbin/policy-rc.d; \
	    chmod 755 /usr/sbin/policy-rc.d; policy=1; fi; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; rc=$$?; \
	  if [ -n "$$policy" ]; then rm -f /usr/sbin/policy-rc.d; fi; exit $$rc; \
	fi

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

lint: setup
	$(VENV)/bin/ruff check .
	shellcheck hive/host/*.sh

typecheck: setup
	$(VENV)/bin/mypy

# The read-only Debian tree the lab's systemd hosts boot (tests/lab/tree.py), made once and kept
host-tree: apt
	python3 -m tests.lab.tree

pytest: setup host-tree
	$(VENV)/bin/python -m compileall -q hive >/dev/null  # every nix-hive the tests start reads it (even under PYTHONDONTWRITEBYTECODE)
	$(WITH_NIX) $(VENV)/bin/pytest -q -n 3 $(PYTEST_ARGS)  # three at once (--dist loadgroup: pyproject.toml): the lab tests mostly wait on hosts

test: lint typecheck pytest

# The suite under the Nix of the other Debian releases (tests/matrix.py): trees kept in
# /var/cache/nix-hive/trees, e.g. make test-matrix ARGS="--release sid -- -k flake"
test-matrix:
	python3 -m tests.matrix $(ARGS)

demo: setup host-tree
	$(WITH_NIX) $(PY) -m tests.demo up

demo-flake: setup host-tree
	$(WITH_NIX) $(PY) -m tests.demo up --flake

demo-down: setup
	$(PY) -m tests.demo down

bench: setup
	$(WITH_NIX) $(PY) -m benchmarks.build_no_build $(ARGS)

bench-fleet: setup  # a subset, e.g.: make bench-fleet ARGS="--only targets"
	$(WITH_NIX) $(PY) -m benchmarks.fleet_deploy $(ARGS)

bench-scale: setup  # other sizes, e.g.: make bench-scale ARGS="--sizes 30,100 --relays 2 --only relays"
	$(WITH_NIX) $(PY) -m benchmarks.fleet_scale $(ARGS)

bench-keys: setup  # e.g. against main's nix-hive too: make bench-keys ARGS="--baseline main"
	$(WITH_NIX) $(PY) -m benchmarks.keys_scale $(ARGS)

bench-diff: setup  # nix-hive diff of 3 hosts against 300, e.g.: make bench-diff ARGS="--sizes 3,100"
	$(WITH_NIX) $(PY) -m benchmarks.diff_scale $(ARGS)

bench-pull: setup  # publish against deploy to N agent hosts, e.g.: make bench-pull ARGS="--sizes 100,200 --mb 2"
	$(WITH_NIX) $(PY) -m benchmarks.pull_scale $(ARGS)

bench-runner: setup  # doit's runner against nix-hive's, CPU per host at 30, 300, 1,000 hosts
	$(PY) -m benchmarks.runner_scale $(ARGS)

bench-eval: setup
	$(WITH_NIX) $(PY) -m benchmarks.eval_parallel

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
