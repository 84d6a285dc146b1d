# adgan-edge: `make demo` runs the main job, `make test` the whole suite.
# Both install first (idempotent): .venv, the package with every extra, and, when run
# as root, the system packages the tests need.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# test processes (pytest-xdist, whole files to a process, so a file's fixtures are made once):
# one per core, at most 4; `make test TEST_WORKERS=0` runs the suite in this one process
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); if [ "$$n" -gt 4 ]; then n=4; fi; \
                  if [ "$$n" -lt 2 ]; then n=0; fi; echo $$n)
APT_PACKAGES := mosquitto libusb-1.0-0 openssl systemd chromium chromium-driver strace e2fsprogs

.PHONY: install test demo clean system-packages

install: system-packages $(STAMP)

system-packages:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    echo "apt-get install:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "warning: system packages missing:$$missing (run 'make install' as root, or install them yourself); tests that need them will skip"; \
	  fi; \
	fi

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[workstation,realsense,broker,gpio,opcua,test]'
	@# the repository's top-level folders on this venv's path (bench scripts, python -m adgan); an
	@# installed wheel keeps them inside adgan_edge instead (adgan_edge/__init__.py)
	$(PY) -c "import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()['purelib'], 'adgan-edge-repo.pth').write_text(str(pathlib.Path.cwd()) + '\\n')"
	touch $(STAMP)

test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

demo: install
	$(VENV)/bin/adgan demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
