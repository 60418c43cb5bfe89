#!/usr/bin/env bash
# One prepared run for a lent CUDA machine, at most 8 minutes: the GPU tests, then issue #20's
# CUDA rows with SAM vit_h: steady-state mask generation, time to result with the models
# loaded (a 1080p photo, 32 photos, a 1080p video, a 12 MP photo) against the stock loop, a
# cold photo, and the image encoder with fused attention.
#
#   bash benchmarks/device_check.sh [OUT_DIR]        # from the repository root
#
# Python packages the machine lacks can travel as wheels in .whl/ (installed with --no-deps
# into /tmp/site, first on the path). Logs, the JSON and the Markdown report go to OUT_DIR
# ($OUT, else /tmp/device-check). It goes on after a failing step, so one call gives all;
# the steps run in order of importance under one deadline (see step below).
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
# Each step gets its own cap, cut to what is left of the whole run's 465 s (SECONDS counts from
# the start), so the script never passes 8 minutes; a step with under 20 s left is skipped.
step() {
  local cap=$1 log=$2 left=$((465 - SECONDS))
  shift 2
  if ((left < 20)); then echo "skipped, ${left} s left: $*" | tee "$out/$log"; return; fi
  timeout "$((cap < left ? cap : left))" "$@" 2>&1 | tee "$out/$log"
}
# -s: test_gpu.py prints the measured bf16/fp16-vs-fp32 mask agreement
step 140 tests.log python3 -m pytest -q -s -p no:cacheprovider tests/test_gpu.py \
  tests/test_fidelity.py tests/test_nets.py tests/test_masks_fast_device.py \
  tests/test_weights_models.py \
  tests/test_pipeline_overlap.py::test_on_cuda_sam_runs_beside_the_network_and_the_outputs_match \
  tests/test_video_overlap.py::test_on_cuda_sam_runs_beside_by_default_and_the_frames_match
# The row: mask generation with vit_h at 1024, steady state, ours vs stock on CUDA
step 110 steady.log python3 -m benchmarks.bench_steady --device cuda --vit-h --repeat 3 \
  --json "$out/steady.json"
# Time to result with the models loaded once, ours vs the stock loop: photo 1080p, 32 photos,
# video 1080p (SAM every frame / every 8th), photo 12 MP; each row lands in the JSON as it
# ends; the profile table of our 1080p photo beside it
step 165 throughput.log python3 -m benchmarks.bench_throughput --device cuda --vit-h \
  --repeat 2 --stock-budget 15 --json "$out/throughput.json" --profile "$out/profile-photo.txt"
# Cold start on the GPU: process start to written output, 720p, SAM vit_h, the full network;
# ours, ours with the loader before issue #20, stock (fp32, one run each)
step 90 cold.log python3 -m benchmarks.bench_cold --cold-only --device cuda --repeat 1 \
  --timeout 60 --json "$out/cold.json"
# SAM's encoder with fused attention (--sam-precision fp32-sdpa) against the published one
step 45 sdpa.log python3 -m benchmarks.bench_steady --device cuda --vit-h \
  --sam-precision fp32-sdpa --encoder-only --repeat 3 --json "$out/sdpa.json"
