#!/usr/bin/env bash
# One prepared run for a lent CUDA machine: the GPU tests, then the quick benchmarks on CUDA.
#
#   bash benchmarks/device_check.sh [OUT_DIR]        # from the repository root
#
# Python packages the machine lacks can travel as wheels in .whl/ (installed with --no-deps
# into /tmp/site, first on the path). Logs, the JSON and the Markdown report go to OUT_DIR
# ($OUT, else /tmp/device-check). It goes on after a failing step, so one call gives all.
set -uo pipefail
out=${1:-${OUT:-/tmp/device-check}}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" \
  2>&1 | tee -a "$out/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_fidelity.py tests/test_nets.py \
  2>&1 | tee "$out/tests.log"
python3 -m benchmarks --device cuda --quick --json "$out/bench.json" --out-md "$out/bench.md" \
  2>&1 | tee "$out/bench.log"
