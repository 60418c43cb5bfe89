#!/usr/bin/env bash
# One prepared run for a lent CUDA machine, at most 8 minutes: the GPU tests, then issue #20's
# CUDA rows with SAM vit_h: steady-state mask generation, time to result with the models
# loaded (a 1080p photo, 32 photos, a 1080p video, a 12 MP photo) against the stock loop, and
# the image encoder with fused attention.
#
#   bash benchmarks/device_check.sh [OUT_DIR]        # from the repository root
#
# Python packages the machine lacks can travel as wheels in .whl/ (installed with --no-deps
# into /tmp/site, first on the path). Logs, the JSON and the Markdown report go to OUT_DIR
# ($OUT, else /tmp/device-check). It goes on after a failing step, so one call gives all;
# each step has its own time limit (140 + 110 + 165 + 45 s: under 8 minutes with set-up).
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
timeout 140 python3 -m pytest -q -s -p no:cacheprovider tests/test_gpu.py tests/test_fidelity.py \
  tests/test_nets.py tests/test_masks_fast_device.py tests/test_weights_models.py \
  tests/test_pipeline_overlap.py::test_on_cuda_sam_runs_beside_the_network_and_the_outputs_match \
  tests/test_video_overlap.py::test_on_cuda_sam_runs_beside_by_default_and_the_frames_match \
  2>&1 | tee "$out/tests.log"
# The row: mask generation with vit_h at 1024, steady state, ours vs stock on CUDA
timeout 110 python3 -m benchmarks.bench_steady --device cuda --vit-h --repeat 3 \
  --json "$out/steady.json" 2>&1 | tee "$out/steady.log"
# Time to result with the models loaded once, ours vs the stock loop: photo 1080p, 32 photos,
# video 1080p (SAM every frame / every 8th), photo 12 MP; each row lands in the JSON as it ends
timeout 165 python3 -m benchmarks.bench_throughput --device cuda --vit-h --repeat 2 \
  --stock-budget 15 --json "$out/throughput.json" --profile "$out/profile-photo.txt" \
  2>&1 | tee "$out/throughput.log"
# SAM's encoder with fused attention (--sam-precision fp32-sdpa) against the published one
timeout 45 python3 -m benchmarks.bench_steady --device cuda --vit-h --sam-precision fp32-sdpa \
  --encoder-only --repeat 3 --json "$out/sdpa.json" 2>&1 | tee "$out/sdpa.log"
