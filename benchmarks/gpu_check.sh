#!/usr/bin/env bash
# The GPU check of the STPN's Triton path (issue 10), in about five minutes on one CUDA GPU:
#   1. the Triton kernel tests compiled on the GPU (not the interpreter), in parallel shards since
#      compiling each variant's kernels is most of their time, and the CUDA end-to-end tests
#      (StpnPPO on cuda, train.py --device cuda);
#   2. python -m benchmarks.layer --device cuda: STPN triton and torch paths vs cuDNN LSTMs, training
#      and rollout rows at the CartPole, maze (and the paper's B=512 T=200 H=55) and Atari sizes;
#   3. python -m benchmarks.end_to_end --device cuda: StpnPPO vs RecurrentPPO steps/s on
#      CartPoleNoVel-v1 and PongNoFrameskip-v4, short runs.
# Targets (ratios in one run): training call at most 3x cuDNN LSTM at the same H, rollout step no
# slower than the LSTM's, end-to-end StpnPPO steps/s at least RecurrentPPO's.
#
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]   (default: $OUT, else benchmarks/results/gpu)
# Needs: PYTHON (default python) with CUDA torch, triton and this project's zoo, envs and test
# extras (pip install -e '.[all]'; Pong needs ale-py's ROMs). Each stage has a time limit, so that
# one stuck stage leaves time for the others; the exit status is 1 if any stage failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-benchmarks/results/gpu}}
PYTHON=${PYTHON:-python}
SHARDS=${SHARDS:-8}
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Compiled kernels: the tests pick the interpreter only where there is no GPU
unset TRITON_INTERPRET
export TRITON_DEFAULT_FP_FUSION=1
failed=()

# stage NAME SECONDS COMMAND...: run with a time limit, log to OUT_DIR/NAME.log and the terminal
stage() {
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s): $*"
  local start=$SECONDS
  if timeout "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"; then
    echo "=== $name: ok in $((SECONDS - start))s"
  else
    echo "=== $name: FAILED after $((SECONDS - start))s (see $OUT_DIR/$name.log)"
    failed+=("$name")
  fi
}

# The kernel tests in SHARDS parallel pytest processes (Triton's disk cache is shared and safe)
kernel_tests() {
  local ids status=0 pids=()
  ids=$("$PYTHON" -m pytest --collect-only -q -p no:cacheprovider tests/ops/stpn/test_fused_triton.py | grep '::') || return 1
  echo "$(wc -l <<<"$ids") tests in $SHARDS shards"
  for ((shard = 0; shard < SHARDS; shard++)); do
    mapfile -t part < <(awk -v n="$SHARDS" -v i="$shard" 'NR % n == i' <<<"$ids")
    ((${#part[@]})) || continue
    "$PYTHON" -m pytest -q -p no:cacheprovider "${part[@]}" >"$OUT_DIR/kernel_tests_shard$shard.log" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  tail -n 3 "$OUT_DIR"/kernel_tests_shard*.log
  return $status
}

"$PYTHON" - <<'EOF' 2>&1 | tee "$OUT_DIR/environment.txt" || exit 1
import sys

import torch

if not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA GPU (a CPU-only torch, or no driver); nothing to check")
try:
    import triton
except ImportError:
    sys.exit("gpu_check: triton does not import; pip install triton (CUDA torch wheels bring it)")
print(f"{torch.cuda.get_device_name()}, torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}")
EOF
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv >>"$OUT_DIR/environment.txt" 2>&1

export -f kernel_tests
export PYTHON OUT_DIR SHARDS
stage kernel_tests 150 bash -c kernel_tests
stage cuda_tests 90 "$PYTHON" -m pytest -q -p no:cacheprovider -k cuda tests/ppo_stpn/test_ppo_stpn.py tests/test_train_enjoy.py
stage layer 150 "$PYTHON" -m benchmarks.layer --device cuda --repeats 5 --out "$OUT_DIR/layer.json"
stage end_to_end 180 "$PYTHON" -m benchmarks.end_to_end --device cuda --envs CartPoleNoVel-v1 PongNoFrameskip-v4 \
  --steps 4096 --out "$OUT_DIR/end_to_end.json"

if ((${#failed[@]})); then
  echo "gpu_check: failed: ${failed[*]}"
  exit 1
fi
echo "gpu_check: all stages passed; results in $OUT_DIR"
