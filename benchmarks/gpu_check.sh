#!/usr/bin/env bash
# One prepared GPU check for issue 13: the CUDA tests and benchmarks/gpu_streams.py, logs in one folder,
# under 5 minutes on an H200 (tests limited to 150 s, benchmark to 210 s).
#
#   benchmarks/gpu_check.sh prepare          # on a machine with PyPI access, once: wheels into .gpu/wheels
#   benchmarks/gpu_check.sh [OUT]            # on the GPU machine (carry .gpu); logs into OUT (default $OUT, else ./gpu-logs)
#   benchmarks/gpu_check.sh --dry-run [OUT]  # the same steps on this CPU machine with tiny sizes
#
# What the GPU machine lacks, and how this script deals with it (its image: Python 3.12, torch 2.11+cu130,
# torchvision, cuda-bindings, cupy, onnx, onnxruntime, opencv, pytest, pyyaml, safetensors, nvcc and g++):
#   pydantic (+ pydantic-core, annotated-types, typing-inspection, typing-extensions), redis-py, pycocotools:
#       brought as cp312 manylinux wheels (`prepare`, about 4 MB; the 64 MiB carry limit is far away) and
#       installed with pip --no-index --target /tmp/segstream-site (never into the image; torch is not touched:
#       this script does not use `make test`, which would pin this machine's torch).
#   PyAV (its wheel bundles FFmpeg, ~35 MB): not brought. Nothing here decodes a file: the pipeline figures
#       come from gpu_streams.py's in-memory 1280x720 sources (paced at 30 fps for the live part), and the
#       one test that runs `segstream run` on an encoded clip is deselected (it is the CPU acceptance test).
#   redis-server: not brought. No selected test or benchmark publishes to Redis; the Redis sink has no GPU
#       code, and its tests run in CI.
#   NVDEC: PyNvVideoCodec (its wheel bundles FFmpeg's demuxers, ~27 MB) is brought into .gpu/nvdec and
#       installed into the same target; it loads only where the container exposes the driver's video
#       libraries (NVIDIA_DRIVER_CAPABILITIES with `video`): otherwise decode_backend() says why, and the NVDEC
#       test reports its skip. Its test clip (H.264, the bundled model's domain) is encoded by `prepare` into
#       .gpu/clips, since the image has no PyAV to encode one; opencv decodes the CPU reference there.
#   segstream itself: used from the working tree (PYTHONPATH), not installed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WHEELS=.gpu/wheels
NVDEC_WHEELS=.gpu/nvdec
PACKAGES="pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 redis==8.1.0 pycocotools==2.0.11"

if [ "${1:-}" = "prepare" ]; then
    mkdir -p "$WHEELS"
    # .gpu/ is git-ignored (.gitignore): it travels to the GPU machine only when named in the device tool's carry.
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$WHEELS" $PACKAGES || exit 2
    mkdir -p "$NVDEC_WHEELS" .gpu/clips
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 -d "$NVDEC_WHEELS" PyNvVideoCodec==2.2.4 || exit 2
    PYTHONPATH=$PWD:$PWD/tests .venv/bin/python -c 'from media import write_shapes_clip; write_shapes_clip(".gpu/clips/shapes.mp4")' || exit 2
    du -sh "$WHEELS" "$NVDEC_WHEELS" .gpu/clips; ls "$WHEELS" "$NVDEC_WHEELS" .gpu/clips
    exit 0
fi

DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
LOGS=${1:-${OUT:-$ROOT/gpu-logs}}
mkdir -p "$LOGS"
exec > >(tee "$LOGS/check.log") 2>&1
PY=${PYTHON:-python3}
[ $DRY = 1 ] && [ -x /work/main/.venv/bin/python ] && PY=${PYTHON:-/work/main/.venv/bin/python}
export PYTHONUNBUFFERED=1 SEGSTREAM_CACHE=${SEGSTREAM_CACHE:-/tmp/segstream-cache}
step() { echo; echo "=== $(date -u +%H:%M:%S) $*"; }

step "environment (dry run: $DRY)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
# NVDEC needs the driver's video libraries in the container (NVIDIA_DRIVER_CAPABILITIES with `video`).
echo "driver video libraries: $(ldconfig -p 2>/dev/null | grep -o -E 'libnv(cuvid|idia-encode)\.so[.0-9]*' | sort -u | tr '\n' ' ' || true)"
echo "NVIDIA_DRIVER_CAPABILITIES=${NVIDIA_DRIVER_CAPABILITIES:-unset}"
"$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "-")'
command -v g++ >/dev/null || { echo "no g++: the kernels' CPU build (RLE strings, CPU ops) cannot compile"; exit 2; }

step "missing packages"
if [ $DRY = 1 ]; then
    echo "dry run: using $PY as it is; the GPU run installs: $PACKAGES"
    [ -d "$WHEELS" ] && ls "$WHEELS"
else
    if ! "$PY" -c 'import pydantic, redis, pycocotools' 2>/dev/null; then
        ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "no wheels in $WHEELS: run 'benchmarks/gpu_check.sh prepare' where PyPI is reachable and carry .gpu"; exit 2; }
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/segstream-site "$WHEELS"/*.whl || exit 2
        export PYTHONPATH=/tmp/segstream-site
    fi
    if ls "$NVDEC_WHEELS"/*.whl >/dev/null 2>&1; then  # optional: without it the NVDEC test reports its skip
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/segstream-site \
            "$NVDEC_WHEELS"/*.whl && export PYTHONPATH=/tmp/segstream-site || echo "PyNvVideoCodec did not install"
    fi
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
"$PY" -c 'import pydantic, redis, pycocotools, segstream.pipeline.streaming; print("imports ok")' || exit 2
"$PY" -c 'from segstream.pipeline.sources.device_frames import decode_backend; print("decode:", decode_backend("cuda"))'

step "kernels: CPU library and NVRTC cubin/PTX for sm_90"
timeout 120 "$PY" -m segstream.kernels --cuda-arch 90 || echo "kernel prebuild failed (rc $?)"

step "CUDA tests"
TESTS="tests/kernels/test_roi_align.py tests/kernels/test_nms.py tests/kernels/test_mask_rle.py
       tests/export/test_static_engine.py tests/export/test_static_graph.py
       tests/pipeline/test_device_frames.py tests/pipeline/test_masks.py"
# The CUDA variants only (their CPU twins run in CI); on the CPU (dry run) they report their skips.
SELECT="(cuda or gpu or nvdec) and not segstream_run"
timeout 150 "$PY" -m pytest -q -rs -p no:cacheprovider $TESTS -k "$SELECT" --junitxml="$LOGS/tests.xml"
TESTS_RC=$?
echo "pytest rc $TESTS_RC"

step "benchmark"
if [ $DRY = 1 ]; then
    timeout 900 "$PY" benchmarks/gpu_streams.py --dry-run --out "$LOGS"
else
    timeout 210 "$PY" benchmarks/gpu_streams.py --out "$LOGS" --rounds 3 --calls 3 --pipeline-frames 128 \
        --streams 8 16 24 --stream-seconds 5
fi
BENCH_RC=$?
echo "benchmark rc $BENCH_RC"

step "done: tests rc $TESTS_RC, benchmark rc $BENCH_RC; logs in $LOGS"
ls -la "$LOGS"
[ $TESTS_RC = 0 ] && [ $BENCH_RC = 0 ]
