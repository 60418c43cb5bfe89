#!/usr/bin/env bash
# One prepared run for a lent CUDA machine, at most 8 minutes: the GPU tests, the steady-state
# mask generation rows with SAM vit_h, then the quick benchmarks on CUDA.
#
#   bash benchmarks/device_check.sh [OUT_DIR]        # from the repository root
#
# Python packages the machine lacks can travel as wheels in .whl/ (installed with --no-deps
# into /tmp/site, first on the path). Logs, the JSON and the Markdown report go to OUT_DIR
# ($OUT, else /tmp/device-check). It goes on after a failing step, so one call gives all;
# each step has its own time limit (150 + 120 + 180 s: 7.5 minutes with set-up).
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
# -s: test_gpu.py prints the measured bf16/fp16-vs-fp32 mask agreement
timeout 150 python3 -m pytest -q -s -p no:cacheprovider tests/test_gpu.py tests/test_fidelity.py \
  tests/test_nets.py tests/test_masks_fast_device.py tests/test_weights_models.py \
  2>&1 | tee "$out/tests.log"
# The row: mask generation with vit_h at 1024, steady state, ours vs stock on CUDA
timeout 120 python3 -m benchmarks.bench_steady --device cuda --vit-h --repeat 3 \
  --json "$out/steady.json" 2>&1 | tee "$out/steady.log"
# SIGINT at the limit: the runner stops its running component and prints no report
timeout -s INT -k 15 180 python3 -m benchmarks --device cuda --quick --json "$out/bench.json" \
  --out-md "$out/bench.md" --logs "$out/logs" 2>&1 | tee "$out/bench.log"
