#!/usr/bin/env bash
# One device session: native kernel tests, then the attention and train-step benchmarks.
# Usage (repo root, on the GPU machine): OUT=/some/dir bash benchmarks/gpu_run.sh [tests|sweep|bench|all|ab]
# ab: native tests (timeout 105 s), then benchmarks/ab.py (old vs new variants, one process, 170 s).
set -o pipefail
OUT=${OUT:-/tmp/ssa_bench}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
what=${1:-all}
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())" | tee "$OUT/env.txt"
if [ "$what" = ab ]; then
  timeout 105 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py > "$OUT/tests.txt" 2>&1
  echo "tests rc=$?" >> "$OUT/tests.txt"
  grep -E "passed|failed|error|rc=" "$OUT/tests.txt" | tail -5
  grep -E "^(FAILED|ERROR)" "$OUT/tests.txt" | head -20
  timeout 170 python3 benchmarks/ab.py "$OUT" 2>&1 | tee "$OUT/ab.txt" | grep -v "^{" 
  echo "ab rc=$?"
  grep -E "passed|failed|rc=" "$OUT/tests.txt" | tail -2
  exit 0
fi
if [ "$what" != bench ]; then
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py 2>&1 | tail -30 | tee "$OUT/tests.txt"
fi
if [ "$what" = all ] || [ "$what" = sweep ]; then
  timeout 100 python3 benchmarks/sweep_select.py "$OUT/sweep_select.json" "$OUT/best_select.json" 2>&1 | tee "$OUT/sweep_select.txt"
fi
if [ "$what" != tests ] && [ "$what" != sweep ]; then
  if [ -f "$OUT/best_select.json" ]; then
    ATTN_ARGS="${ATTN_ARGS:-} --select-config $OUT/best_select.json"
    TRAIN_ARGS="${TRAIN_ARGS:-} --select-config $OUT/best_select.json"
  fi
  timeout 170 python3 -m ssa.cli bench attention ${ATTN_ARGS:-} --json "$OUT/attention.json" 2>&1 | tee "$OUT/attention.txt"
  timeout 100 python3 -m ssa.cli bench train-step ${TRAIN_ARGS:-} --json "$OUT/train_step.json" 2>&1 | tee "$OUT/train_step.txt"
fi
