# Entry points: `make demo` (the base install plus the demo extra: no torch, no Chromium) and
# `make test` (everything: torch, ONNX, int8, eval, training, test tools, Chromium for the viewer
# test). Both build .venv when missing and install the Debian packages they use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.segstream-installed
DEMO_STAMP := $(VENV)/.segstream-demo-installed
KERNELS := segstream/kernels/libsegstream_kernels.so

.PHONY: demo test lint system-deps demo-system-deps venv kernels wheel bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch/torchvision are pinned to the builds this machine type carries; the rest comes from PyPI.
# The editable install runs CMake (scikit-build-core): the CPU kernels are compiled here, once.
$(STAMP): pyproject.toml CMakeLists.txt | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[all]'
	touch $(STAMP) $(DEMO_STAMP)

# The demo: the base install (OpenVINO engine, no torch) plus what its accuracy summary needs.
$(DEMO_STAMP): pyproject.toml CMakeLists.txt | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[demo]'
	touch $(DEMO_STAMP)

venv: $(STAMP)

# The CPU kernel library built into the checkout, for running the sources through PYTHONPATH
# without an install (an installed segstream has it from its wheel or editable install).
kernels: $(KERNELS)

$(KERNELS): CMakeLists.txt $(wildcard segstream/kernels/csrc/*)
	cmake -S . -B build/kernels -DCMAKE_BUILD_TYPE=Release
	cmake --build build/kernels
	cmake --install build/kernels --prefix .

# The platform wheel (CPU kernels inside) from the committed files only.
wheel: | $(PY)
	rm -rf build/wheel-src && mkdir -p build/wheel-src dist
	git archive HEAD | tar -x -C build/wheel-src
	$(PY) -m pip wheel --no-deps -w dist build/wheel-src

system-deps:
	@bash .ci/system-deps --with-viewer-test

demo-system-deps:
	@bash .ci/system-deps

# The import contract first (seconds): a wrong arrow fails `make test` (and .ci/run) before the suite runs.
lint: $(STAMP)
	$(VENV)/bin/lint-imports

test: system-deps $(STAMP) lint
	$(PY) -m pytest -q

demo: demo-system-deps $(DEMO_STAMP)
	$(PY) -m segstream.commands.demo

bench: $(STAMP)
	$(PY) benchmarks/pipeline_vs_engine.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache $(KERNELS)
