#!/usr/bin/env bash
# The GPU checklist on a CUDA machine, in one go: the Triton/CUDA tests on the device, then
# benchmarks/gpu_speed.py (speed and memory beside an MLP, the dense formulation and pykan).
#
#   benchmarks/gpu_check.sh [OUTDIR]      # from the repository root; OUTDIR default benchmarks/results
#
# kanlab runs from source (PYTHONPATH=src); pytest-xdist spreads the tests (and Triton's compiles)
# over 8 workers when it is installed. Each part has its own time limit (TEST_TIMEOUT,
# BENCH_TIMEOUT seconds) so one slow part leaves the other its time.
set -uo pipefail
out=${1:-benchmarks/results}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv \
    | tee "$out/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'CUDA', torch.version.cuda, \
'triton', triton.__version__)" | tee -a "$out/device.txt"
workers=()
python3 -c "import xdist" 2>/dev/null && workers=(-n 8)
timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -q -p no:cacheprovider "${workers[@]}" \
    tests/test_gpu.py tests/test_kernels.py \
    -k "(triton or gpu or cuda or cardinal or strategy) and not interpreter" 2>&1 \
    | tee "$out/pytest.log" | tail -30
echo "pytest exit: ${PIPESTATUS[0]}"
timeout "${BENCH_TIMEOUT:-360}" python3 benchmarks/gpu_speed.py --out "$out/gpu_speed.json" \
    2>&1 | tee "$out/gpu_speed.log"
echo "gpu_speed exit: ${PIPESTATUS[0]}"
