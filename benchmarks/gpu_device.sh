#!/usr/bin/env bash
# On the GPU machine, after ../shared/gpu's parts are staged (see ../shared/gpu/README.md): unpack them, make the
# project visible to the image's Python (and so to the Python-backend stub), then run what is asked:
#   bash benchmarks/gpu_device.sh tests [N]        # the GPU variant of the end-to-end tests, N times in a row
#   bash benchmarks/gpu_device.sh record [ARGS]    # benchmarks/record.py (the benchmark of record) into $OUT
#   bash benchmarks/gpu_device.sh record --runs trace sweep --py-spy 5   # the trace, the sweep, py-spy dumps
#   SEGMENT_DALI_BACKEND=build/native/dali bash benchmarks/gpu_device.sh tests 1   # also on the native target
#   bash benchmarks/gpu_device.sh record --runs chain trace --no-long --dali-backend build/native/dali   # native_...
#       (a GPU build of Triton's DALI backend, made on the development machine and carried: `carry: ["build/native"]`)
#   ONE_GPU=1 bash benchmarks/gpu_device.sh ...     # on a machine of several GPUs, as one of one GPU: GPU 0 and 16
#                                                   # cores (the nvidia-h200 kind), into /tmp/record-1gpu
# Everything it writes for the caller goes to $OUT (record.json, logs, the CLI's profile).
# py-spy (for --py-spy) is not on the GPU machine: after pack.sh (it empties .gpu), download its wheel here into a part,
#   python3 -m pip download --no-deps --only-binary=:all: --platform manylinux2014_x86_64 -d .gpu/w-pyspy py-spy==0.4.3
# and carry .gpu/w-pyspy with one of the staging calls before the first assemble: assemble.sh installs every staged
# wheel into /tmp/site, and the py-spy binary lands in /tmp/site/bin (on PATH below).
set -euo pipefail
# A server an earlier, killed command left (its own session) would hold the GPU and the ports.
pkill -KILL -f tritonserver 2>/dev/null || true
pkill -KILL -f triton_python_backend_stub 2>/dev/null || true
bash .gpu/bin/stage.sh >/dev/null
bash .gpu/bin/assemble.sh
export LD_LIBRARY_PATH=/tmp/site/nvidia_pytriton.libs:${LD_LIBRARY_PATH:-}
export PATH=/tmp/site/bin:$PATH  # py-spy, where its wheel was staged
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1 RECORD_WORK=/tmp/record-work
site=$(python3 -c 'import site; print(site.getsitepackages()[0])')
echo "$PWD" > "$site/segment-video-project.pth"
python3 -m repo.stub_env --install
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# What a user has after `python -m export.weights` (here seeded: this machine has no internet): the CLI runs as is.
[ -f export/fcn_resnet101.pt ] || python3 -m export.weights --random-seed 0 >/dev/null
out=${OUT:-out}
mkdir -p "$out"
record=${RECORD_DIR:-/tmp/record}
if [ -n "${ONE_GPU:-}" ]; then
  export CUDA_VISIBLE_DEVICES=0
  record=/tmp/record-1gpu
  taskset -p -c 0-15 $$ >/dev/null  # this shell, and so all it starts
fi
case "${1:-tests}" in
  tests)
    for i in $(seq 1 "${2:-1}"); do
      echo "== GPU tests, run $i"
      SEGMENT_GPU_TESTS=1 timeout 590 python3 -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tee "$out/gpu_tests_$i.log" | tail -15 || true
    done ;;
  # /tmp lasts while the machine is held: the runs of several calls add up there, and each call returns them all.
  record) python3 benchmarks/record.py --out "$record" "${@:2}"; cp -r "$record/." "$out/" ;;
esac
