#!/usr/bin/env bash
# Device check of the whole stack: native decode-kernel tests, the presets training with
# backend=auto (Triton sparse stream, SDPA full stream), a quick eval, and the decode benchmark.
# Usage (repo root, on the GPU machine, with the small data copy in .data/): OUT=dir bash benchmarks/gpu_presets.sh
set -o pipefail
OUT=${OUT:-/tmp/ssa_gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src SSA_DATA_DIR=$PWD/.data
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())" | tee "$OUT/env.txt"
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_decode_kernel.py 2>&1 | tail -3 | tee "$OUT/tests.txt"
for m in nsa ssa; do  # ssa covers the full and moba streams
  timeout 50 python3 -m ssa.cli train --preset tiny --method $m --out "/tmp/tiny-$m" --no-progress \
    --set train.max_steps=100 train.eval_every=100 train.save_every=100 2>&1 | tail -2 | tee -a "$OUT/train.txt"
done
timeout 40 python3 -m ssa.cli eval /tmp/tiny-ssa --out-dir /tmp/tiny-eval --no-progress --block-counts 2,4,8,32 2>&1 | tail -12 | tee "$OUT/eval.txt"
timeout 80 python3 -m ssa.cli train --preset study --method ssa --out /tmp/study-ssa --no-progress \
  --set train.max_steps=20 train.log_every=5 train.eval_every=20 train.save_every=20 train.warmup_steps=5 2>&1 | tail -4 | tee -a "$OUT/train.txt"
timeout 120 python3 -m ssa.cli bench decode --contexts 8192,32768,131072 --batches 1,8 \
  --gen-contexts 131072 --new-tokens 32 --json "$OUT/decode.json" 2>&1 | tail -25 | tee "$OUT/decode.txt"
