#!/usr/bin/env bash
# The prepared GPU check: on a machine with a CUDA GPU, PyTorch and no network, build dcsim with
# its CUDA kernels, run the kernel, engine and CUDA-graph tests (CPU-vs-CUDA parity included),
# compute-sanitizer's memcheck on the CUDA kernel tests, and the benchmark set; results go under
# $OUT (default ./gpu-check-out): summary.txt (with memcheck's verdict), build.log, tests.log, bench.md, bench.json,
# bench_more.json (VGG-16, ResNet-50), precision.json (accuracy effect of reduced precision), streaming.json.
#   bash bench/gpu_check.sh          # ResNet-18 matrix, VGG-16 and ResNet-50 (about 8-9 minutes on an H200)
#   bash bench/gpu_check.sh quick    # without VGG-16 and ResNet-50 (about 6 minutes)
#   bash bench/gpu_check.sh reproduce [resnet18|vgg16] [BUDGET_MINUTES]
#       build, then `dcsim reproduce` on CIFAR-10 (DCSIM_CIFAR, default ../shared/data/cifar10-jpeg.tar.gz)
#       with a training budget (default 5.5 minutes: build ~1.5, data ~0.5, evaluation ~1 => ~9 minutes in all);
#       brings back 7 files: summary.txt, build.log, reproduce.log, reproduce.tar.gz (report.md/json,
#       results.json, traces, plots, zoo manifest) and the weights as safetensors shards of <= 16 MiB (ResNet-18: 3).
#   bash bench/gpu_check.sh distributed
#       build, then bench/distributed_check.sh on CUDA (NCCL; about 3 minutes in all): torchrun train with
#       --sync-bn killed and resumed, trace and eval against one process, and on a 1-GPU node the refusal
#       of 2 ranks; brings back summary.txt, build.log, distributed.txt and the train/trace/eval/refuse logs.
set -uo pipefail
cd "$(dirname "$0")/.."
mode="${1:-full}"
OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
log() { echo "[gpu_check $(date +%T)] $*" | tee -a "$OUT/summary.txt"; }
nvidia-smi >> "$OUT/summary.txt" 2>&1 || log "nvidia-smi failed"
log "device: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null); mode $mode"

# Build into the machine's Python (it holds PyTorch and the build tools; nothing is downloaded).
python3 -c "import torch; assert torch.cuda.is_available(), 'torch sees no GPU'; print('torch', torch.__version__)" \
  2>&1 | tee -a "$OUT/summary.txt"
DCSIM_CUDA=ON python3 -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 \
  || { log "build FAILED (see build.log)"; tail -30 "$OUT/build.log"; exit 1; }
python3 -c "import dcsim; print('dcsim backends', dcsim.backends())" 2>&1 | tee -a "$OUT/summary.txt"

if [ "$mode" = reproduce ]; then
  arch="${2:-resnet18}"
  budget="${3:-5.5}"
  data="${DCSIM_CIFAR:-../shared/data/cifar10-jpeg.tar.gz}"
  run_dir="/tmp/dcsim-reproduce-$arch"  # full results stay on the machine; a packed copy comes back
  log "reproduce $arch on CIFAR-10, training budget $budget minutes ($data)"
  timeout 510 python3 -m dcsim.cli reproduce --dataset cifar10 --data-root "$data" --arch "$arch" \
    --budget-minutes "$budget" --device cuda --quiet --out "$run_dir" > "$OUT/reproduce.log" 2>&1
  rc=$?
  log "reproduce rc=$rc ($(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(r['status'], r.get('message', '')[:300])" "$run_dir/results.json" 2>&1))"
  tail -25 "$OUT/reproduce.log" >> "$OUT/summary.txt"
  # reports, traces, plots and the zoo manifest in one archive; the shards (<= 16 MiB each) beside it
  tar -czf "$OUT/reproduce.tar.gz" -C "$run_dir" --exclude='*.safetensors' --exclude='model.work' . 2>> "$OUT/summary.txt"
  if [ "$arch" = resnet18 ]; then  # VGG-16's 134 MB would need 9 shards: more files than come back
    cp "$run_dir"/zoo/model-*.safetensors "$OUT/" 2>> "$OUT/summary.txt" || log "no weight shards (training did not finish)"
  fi
  ls -la "$OUT" >> "$OUT/summary.txt"
  log "done"
  exit "$rc"
fi

if [ "$mode" = distributed ]; then
  log "torchrun on CUDA (NCCL): bench/distributed_check.sh"
  timeout 400 bash bench/distributed_check.sh cuda "$OUT"
  rc=$?
  log "distributed rc=$rc"
  grep -E "PASS|FAIL|done" "$OUT/distributed.txt" >> "$OUT/summary.txt"
  exit "$rc"
fi

log "tests (kernels, engine, graphs, precision: CPU and CUDA)"
timeout 150 python3 -m pytest tests/test_kernels.py tests/test_graphs.py tests/test_engine.py tests/test_precision.py -q -rs --maxfail=20 \
  > "$OUT/tests.log" 2>&1
log "tests rc=$? ($(tail -1 "$OUT/tests.log"))"
grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -20 | tee -a "$OUT/summary.txt"

if command -v compute-sanitizer >/dev/null 2>&1; then
  log "compute-sanitizer memcheck on the CUDA kernel tests"
  timeout 100 compute-sanitizer --tool memcheck --error-exitcode 9 \
    python3 -m pytest tests/test_kernels.py -q -k "cuda" -x > /tmp/memcheck.log 2>&1
  log "memcheck rc=$? ($(grep -c 'ERROR SUMMARY: 0 errors' /tmp/memcheck.log) clean summaries)"
  grep -E "ERROR SUMMARY|passed|failed|Invalid" /tmp/memcheck.log | head -20 >> "$OUT/summary.txt"
else
  log "compute-sanitizer not found: memcheck skipped"
fi

log "kernel benchmarks (native CUDA vs the PyTorch reference on the GPU)"
timeout 60 python3 -m pytest bench/bench_kernels.py -o python_files='bench_*.py' --benchmark-only -q \
  --benchmark-json=/tmp/kernels.json > /tmp/kernels.log 2>&1
log "kernels rc=$?"
python3 -c "import json,sys; [print(b['name'], 'min %.1f us' % (1e6 * b['stats']['min']), 'speedup vs reference %.2fx' % b['extra_info']['speedup_vs_reference']) for b in json.load(open(sys.argv[1]))['benchmarks']]" \
  /tmp/kernels.json 2>&1 | tee -a "$OUT/summary.txt"

log "benchmarks"
B=(python3 -m dcsim.cli bench --device cuda --repeats 5)
timeout 200 "${B[@]}" --models resnet18 --graphs off on --masked --chunk 1 4 --stream 64 --json "$OUT/bench.json" \
  2>&1 | grep -v "^dcsim bench:" > "$OUT/bench.md"
if [ "$mode" != quick ]; then
  timeout 120 "${B[@]}" --models vgg16 resnet50 --graphs on --json "$OUT/bench_more.json" \
    2>&1 | grep -v "^dcsim bench:" >> "$OUT/bench.md"
fi
log "bench rc=$?"
timeout 90 "${B[@]}" --models resnet18 --graphs on --chunk 1 4 --precision tf32 bf16 \
  2>&1 | grep -v "^dcsim bench:" | grep -E "tf32|bf16" | sort -u >> "$OUT/bench.md"
log "bench (tf32, bf16) rc=$?"
cat "$OUT/bench.md" >> "$OUT/summary.txt"

log "accuracy effect of TF32 and bf16/fp16 currents (digits)"
timeout 60 python3 bench/precision_effect.py --device cuda --out "$OUT/precision.json" 2>&1 | tee -a "$OUT/summary.txt"

log "streaming vs static batches (digits, pytest-benchmark)"
timeout 90 python3 -m pytest bench/bench_streaming.py -o python_files='bench_*.py' --benchmark-only -q \
  --benchmark-columns=min,mean --benchmark-json="$OUT/streaming.json" 2>&1 | tail -8 >> "$OUT/summary.txt"
python3 -c "import json,sys; [print(b['name'], {k: round(v, 3) if isinstance(v, float) else v for k, v in b['extra_info'].items()}) for b in json.load(open(sys.argv[1]))['benchmarks']]" \
  "$OUT/streaming.json" 2>&1 | tee -a "$OUT/summary.txt"
log "done"
