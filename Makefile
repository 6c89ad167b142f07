# Two entry points: `make demo` and `make test`. Both build .venv when missing and install
# the Debian packages the pipeline and its tests use (redis-server, the gstreamer RTSP server).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.segstream-installed

.PHONY: demo test system-deps venv bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch/torchvision are pinned to the builds this machine type carries; the rest comes from PyPI.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[onnx,test]'
	touch $(STAMP)

venv: $(STAMP)

system-deps:
	@bash .ci/system-deps

test: system-deps $(STAMP)
	$(PY) -m pytest -q

demo: system-deps $(STAMP)
	$(PY) -m segstream.pipeline.demo

bench: $(STAMP)
	$(PY) benchmarks/pipeline_vs_engine.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
