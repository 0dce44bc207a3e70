#!/usr/bin/env bash
# The prepared GPU check: on a machine with a CUDA GPU, PyTorch and no network, build dcsim with
# its CUDA kernels, run the kernel, engine and CUDA-graph tests (CPU-vs-CUDA parity included),
# compute-sanitizer's memcheck on the CUDA kernel tests, and the benchmark set; results go under
# $OUT (default ./gpu-check-out): summary.txt, build.log, tests.log, memcheck.log, bench.md, bench.json.
#   bash bench/gpu_check.sh          # full benchmark set (about 8 minutes on an H100)
#   bash bench/gpu_check.sh quick    # ResNet-18 only (about 4 minutes)
set -uo pipefail
cd "$(dirname "$0")/.."
mode="${1:-full}"
OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
log() { echo "[gpu_check $(date +%T)] $*" | tee -a "$OUT/summary.txt"; }
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || log "nvidia-smi failed"
log "device: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null); mode $mode"

# Build into the machine's Python (it holds PyTorch and the build tools; nothing is downloaded).
python3 -c "import torch; assert torch.cuda.is_available(), 'torch sees no GPU'; print('torch', torch.__version__)" \
  2>&1 | tee -a "$OUT/summary.txt"
DCSIM_CUDA=ON python3 -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 \
  || { log "build FAILED (see build.log)"; tail -30 "$OUT/build.log"; exit 1; }
python3 -c "import dcsim; print('dcsim backends', dcsim.backends())" 2>&1 | tee -a "$OUT/summary.txt"

log "tests (kernels, engine, graphs: CPU and CUDA)"
timeout 150 python3 -m pytest tests/test_kernels.py tests/test_graphs.py tests/test_engine.py -q -rs --maxfail=20 \
  > "$OUT/tests.log" 2>&1
log "tests rc=$? ($(tail -1 "$OUT/tests.log"))"
grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -20 | tee -a "$OUT/summary.txt"

if command -v compute-sanitizer >/dev/null 2>&1; then
  log "compute-sanitizer memcheck on the CUDA kernel tests"
  timeout 100 compute-sanitizer --tool memcheck --error-exitcode 9 \
    python3 -m pytest tests/test_kernels.py -q -k "cuda" -x > "$OUT/memcheck.log" 2>&1
  log "memcheck rc=$? ($(grep -c 'ERROR SUMMARY: 0 errors' "$OUT/memcheck.log") clean summaries; $(tail -1 "$OUT/memcheck.log"))"
else
  log "compute-sanitizer not found: memcheck skipped"
fi

log "benchmarks"
case "$mode" in
  quick) bench_args=(--models resnet18 --graphs off on --masked --chunk 1 4) ;;
  *) bench_args=(--graphs off on --masked) ;;
esac
timeout 400 python3 -m dcsim.cli bench --device cuda --repeats 5 "${bench_args[@]}" --json "$OUT/bench.json" > "$OUT/bench.md" 2>&1
log "bench rc=$?"
grep -v "dcsim bench:" "$OUT/bench.md" >> "$OUT/summary.txt"
log "done"
