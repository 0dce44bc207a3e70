#!/usr/bin/env bash
# Multi-process check of dcsim under torchrun on one machine, for a device: cpu (gloo) or cuda (NCCL).
#   bash bench/distributed_check.sh cpu  OUTDIR   # any machine: 1 vs 2 ranks (about 1 minute on 2 cores)
#   bash bench/distributed_check.sh cuda OUTDIR   # a GPU machine; bench/gpu_check.sh distributed runs it
# On digits (no files needed): `dcsim train --sync-bn` under torchrun (SyncBatchNorm on CUDA, dcsim's
# GlobalBatchNorm2d on the CPU), killed after its first epoch and resumed; then trace and eval
# under torchrun against one process. With N = 2 ranks where the node has 2 devices (always on the
# CPU), else 1 rank, and on a 1-GPU node it checks that 2 ranks are refused with a clear error.
# Python: $PYTHON, else run.sh's .venv when present, else python3.
# Writes OUTDIR/distributed.txt (every verdict) and the logs; exits 1 if any check failed.
set -uo pipefail
cd "$(dirname "$0")/.."
dev="${1:?usage: distributed_check.sh cpu|cuda OUTDIR}"
out="${2:?usage: distributed_check.sh cpu|cuda OUTDIR}"
mkdir -p "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
py="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"  # run.sh's venv when present
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
failed=0
say() { echo "[distributed_check $(date +%T)] $*" | tee -a "$out/distributed.txt"; }
verdict() {  # verdict NAME RC: a check passes when RC is 0
  if [ "$2" -eq 0 ]; then say "PASS $1"; else say "FAIL $1 (rc $2)"; failed=1; fi
}
run() { "$py" -m dcsim "$@"; }
children_of() {  # the pids whose parent is $1, from /proc (no procps needed)
  local f stat fields
  for f in /proc/[0-9]*/stat; do
    stat="$(cat "$f" 2>/dev/null)" || continue
    read -r -a fields <<< "${stat##*) }"  # after the command name: state, ppid, ...
    [ "${fields[1]:-}" = "$1" ] && basename "$(dirname "$f")"
  done
}
torchrun_n() { local n="$1"; shift; "$py" -m torch.distributed.run --standalone --nproc-per-node "$n" -m dcsim "$@"; }

if [ "$dev" = cuda ]; then
  gpus="$("$py" -c 'import torch; print(torch.cuda.device_count())')"
else
  gpus=2
fi
ranks=$(( gpus >= 2 ? 2 : 1 ))
say "device $dev, $gpus device(s) on this node, $ranks rank(s); $py: $("$py" -c 'import torch, dcsim; print("torch", torch.__version__, "dcsim", dcsim.__version__)')"

# train, float stage: one process; then torchrun, killed (SIGKILL: launcher and ranks) once its first epoch is
# saved, and the same line again (resumes). Float training is compared: LSQ rounding amplifies
# float-order differences (1 vs 2 threads in one process differ by ~1e-3 after one LSQ epoch).
F=(train --dataset digits --arch small_cnn --width 8 --float-epochs 4 --epochs 0 --train-batch-size 64
   --device "$dev" --sync-bn)
run "${F[@]}" --quiet --out "$work/one.safetensors" > "$out/train.log" 2>&1
verdict "train, one process" $?
"$py" -m torch.distributed.run --standalone --nproc-per-node "$ranks" -m dcsim "${F[@]}" \
  --out "$work/dist.safetensors" >> "$out/train.log" 2>&1 &
agent=$!
for _ in $(seq 1200); do [ -e "$work/dist.work/last.safetensors" ] && break; sleep 0.05; done
# the ranks run in sessions of their own (torchrun starts them so): freeze the agent, kill them, then it
kill -STOP "$agent"
ranks_pids="$(children_of "$agent")"
kill -KILL $ranks_pids "$agent"; wait "$agent" 2>/dev/null
for pid in $ranks_pids; do  # until each rank has exited (and so released the working folder's lock); at most 5 s
  for _ in $(seq 100); do
    stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || break
    read -r -a fields <<< "${stat##*) }"
    [ "${fields[0]}" = Z ] && break
    sleep 0.05
  done
done
[ -e "$work/dist.work/last.safetensors" ] && [ ! -e "$work/dist.safetensors" ]
verdict "train under torchrun ($ranks ranks): killed after its first epoch, no checkpoint written" $?
torchrun_n "$ranks" "${F[@]}" --out "$work/dist.safetensors" >> "$out/train.log" 2>&1
verdict "train under torchrun ($ranks ranks): the same line again runs to the end" $?
"$py" - "$work/one.safetensors" "$work/dist.safetensors" >> "$out/distributed.txt" 2>&1 <<'EOF2'
import json, sys
from safetensors import safe_open
from safetensors.torch import load_file
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
with safe_open(sys.argv[2], "pt") as f:
    training = json.loads(f.metadata()["dcsim"])["training"]
print("train: the torchrun run resumed after epochs", training.get("resumed_at_epochs"), "of", training["planned_epochs"])
assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
worst = max((a[k].double() - b[k].double()).abs().max().item() / max(1.0, a[k].double().abs().max().item())
            for k in a if a[k].is_floating_point())
print(f"train: one process vs torchrun, worst weight difference relative to max(1, |w|max): {worst:.2e}")
sys.exit(0 if worst < 1e-3 and training.get("resumed_at_epochs") else 1)
EOF2
verdict "train: resumed, and the weights equal one process's within 1e-3" $?
# LSQ stage (step sizes initialised from the global batch, all-reduced): the model used below
L=(train --dataset digits --arch small_cnn --width 8 --float-epochs 1 --epochs 1 --train-batch-size 64
   --device "$dev" --sync-bn --quiet --out "$work/lsq.safetensors")
torchrun_n "$ranks" "${L[@]}" >> "$out/train.log" 2>&1
verdict "train under torchrun ($ranks ranks), float then LSQ" $?

# trace and eval: one process against torchrun
R=(--dataset digits --method qcfs --steps 8 --batch-size 50 --device "$dev")
run trace "$work/lsq.safetensors" "${R[@]}" --out "$work/one.npz" > "$out/trace.log" 2>&1
verdict "trace, one process" $?
torchrun_n "$ranks" trace "$work/lsq.safetensors" "${R[@]}" --out "$work/dist.npz" >> "$out/trace.log" 2>&1
verdict "trace under torchrun ($ranks ranks)" $?
"$py" - "$work/one.npz" "$work/dist.npz" >> "$out/distributed.txt" 2>&1 <<'EOF'
import sys
import numpy as np
a, b = np.load(sys.argv[1]), np.load(sys.argv[2])
same = {k: bool(np.array_equal(a[k], b[k])) for k in a.files if k in b.files}
print("trace arrays equal:", same)
sys.exit(0 if same and all(same.values()) and set(a.files) == set(b.files) else 1)
EOF
verdict "trace: torchrun equals one process bit for bit" $?
run eval "$work/lsq.safetensors" "${R[@]}" --trace "$work/one.npz" --json "$work/one.json" > "$out/eval.log" 2>&1
verdict "eval, one process" $?
torchrun_n "$ranks" eval "$work/lsq.safetensors" "${R[@]}" --trace "$work/one.npz" --json "$work/dist.json" >> "$out/eval.log" 2>&1
verdict "eval under torchrun ($ranks ranks)" $?
"$py" - "$work/one.json" "$work/dist.json" >> "$out/distributed.txt" 2>&1 <<'EOF'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
drop = {"ms_per_inference", "plots", "ranks", "seconds", "train_seconds"}  # wall times and rank lists
def strip(d):
    if isinstance(d, dict):
        return {k: strip(v) for k, v in d.items() if k not in drop}
    return [strip(v) for v in d] if isinstance(d, list) else d
print("eval one process:", json.dumps(strip(a))[:400])
sys.exit(0 if strip(a) == strip(b) else 1)
EOF
verdict "eval: torchrun result equals one process's (timings aside)" $?

if [ "$dev" = cuda ] && [ "$gpus" -lt 2 ]; then
  torchrun_n 2 trace "$work/lsq.safetensors" "${R[@]}" --out "$work/two.npz" > "$out/refuse.log" 2>&1
  rc=$?
  refused=1
  [ "$rc" -ne 0 ] && grep -q "ranks on this node but only" "$out/refuse.log" && refused=0
  verdict "2 ranks on a 1-GPU node are refused (rc $rc) with the error naming the GPUs" "$refused"
  [ ! -e "$work/two.npz" ]
  verdict "the refused run wrote no trace" $?
fi
say "done: $([ $failed -eq 0 ] && echo all checks passed || echo SOME CHECKS FAILED)"
exit "$failed"
