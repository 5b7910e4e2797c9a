# Set-up and entry points. Both targets work on a fresh machine: they create .venv when missing
# and install seglearn (editable) with its dev and napari extras first; on Debian / Ubuntu the
# napari tests also need an X server (Xvfb, started by pytest-xvfb) and a Mesa OpenGL driver,
# installed with apt-get only when missing (root, or sudo).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Xvfb, Mesa GL and the X libraries PyQt5's xcb platform plugin loads (napari needs OpenGL; Qt's
# offscreen platform has none)
APT_PKGS := xvfb libgl1 libglx-mesa0 libegl1 libfontconfig1 libglib2.0-0 libdbus-1-3 libx11-xcb1 \
	libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 \
	libxcb-shape0 libxcb-sync1 libxcb-xfixes0 libxcb-xinerama0 libxcb-xkb1
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install run test bench clean system-deps

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev,napari]'
	touch $(STAMP)

# apt-get only when a package is missing (fast on repeated runs); skipped where there is no apt-get
system-deps:
	@if command -v apt-get >/dev/null && ! dpkg -s $(APT_PKGS) >/dev/null 2>&1; then \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $(APT_PKGS); fi

install: $(STAMP) system-deps

run: install
	$(BIN)/python predict.py

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
