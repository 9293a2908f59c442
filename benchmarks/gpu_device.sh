#!/usr/bin/env bash
# On the GPU machine, after ../shared/gpu's parts are staged (see ../shared/gpu/README.md): unpack them, make the
# project visible to the image's Python (and so to the Python-backend stub), then run what is asked:
#   bash benchmarks/gpu_device.sh tests       # the GPU variant of the end-to-end tests
#   bash benchmarks/gpu_device.sh benchmark   # benchmarks/gpu.py
set -euo pipefail
bash .gpu/bin/stage.sh >/dev/null
bash .gpu/bin/assemble.sh
export LD_LIBRARY_PATH=/tmp/site/nvidia_pytriton.libs:${LD_LIBRARY_PATH:-}
site=$(python3 -c 'import site; print(site.getsitepackages()[0])')
echo "$PWD" > "$site/segment-video-project.pth"
python3 -m repo.stub_env --install
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
mkdir -p "${OUT:-out}"
case "${1:-tests}" in
  tests) SEGMENT_GPU_TESTS=1 python3 -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tee "${OUT:-out}/gpu_tests.log" | tail -40 ;;
  benchmark) python3 benchmarks/gpu.py --out "${OUT:-out}" "${@:2}" 2>&1 | grep -v '^[|+]' | tail -60 ;;
esac
