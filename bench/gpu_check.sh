#!/usr/bin/env bash
# The prepared GPU check: on a machine with a CUDA GPU and no network, build dcsim with its CUDA
# kernels, run the tests (CPU-vs-CUDA parity included), compute-sanitizer's memcheck on the kernel
# tests, and the benchmark set; results go under $OUT (default ./gpu-check-out). Aim: < 8 minutes.
#   bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
log() { echo "[gpu_check $(date +%T)] $*" | tee -a "$OUT/summary.txt"; }
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || log "nvidia-smi failed"
log "device: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null)"

# Build into a fresh venv that sees the machine's torch (no network needed if torch is installed).
python3 -m venv --system-site-packages .venv-gpu
. .venv-gpu/bin/activate
python -c "import torch; assert torch.cuda.is_available(), 'torch sees no GPU'; print(torch.__version__)" 2>&1 | tee -a "$OUT/summary.txt"
DCSIM_CUDA=ON pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 \
  || { log "build FAILED (see build.log)"; exit 1; }
python -c "import dcsim; print('backends', dcsim.backends())" | tee -a "$OUT/summary.txt"

log "tests"
timeout 240 python -m pytest tests -q -x --junitxml="$OUT/tests.xml" > "$OUT/tests.log" 2>&1
log "tests rc=$? ($(tail -1 "$OUT/tests.log"))"

if command -v compute-sanitizer >/dev/null 2>&1; then
  log "compute-sanitizer memcheck on the kernel tests (CUDA cases)"
  timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 \
    python -m pytest tests/test_kernels.py -q -k cuda > "$OUT/memcheck.log" 2>&1
  log "memcheck rc=$? ($(grep -c 'ERROR SUMMARY: 0' "$OUT/memcheck.log") clean summaries)"
else
  log "compute-sanitizer not found: memcheck skipped"
fi

log "benchmarks"
timeout 200 dcsim bench --device cuda --repeats 3 --json "$OUT/bench.json" > "$OUT/bench.md" 2>&1
log "bench rc=$?"
cat "$OUT/bench.md" >> "$OUT/summary.txt"
