#!/usr/bin/env bash
# One call on one GPU (H200), about 520 s: the training-speed targets after the compiled loss
# (scale.sh: pilot vs the plain compiled script, 300m MFU and SSA/full), the compiled pilot step's
# kernel profile (profile_step.py train), and compiled training steps over packed documents for every
# method (compile_docs.py).
# Run from the repository root: OUT=dir bash benchmarks/device/session_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
export OUT PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
bash benchmarks/device/scale.sh
mkdir -p "$OUT/profiles"
timeout -k 5 130 python3 benchmarks/profile_step.py train "$OUT/profiles/train_compiled.json" --shape pilot \
  --methods full,plain,ssa --compile --steps 5 --warmup 4 > "$OUT/profiles/train_compiled.log" 2>&1
echo "train compiled rc=$?"
python3 benchmarks/profile_step.py summary "$OUT/profiles/train_compiled.json" > "$OUT/profiles/summary.md" 2>&1
head -40 "$OUT/profiles/summary.md"
mkdir -p "$OUT/compile"
timeout -k 5 170 python3 benchmarks/device/compile_docs.py "$OUT/compile/compile_docs.json" --steps-only > "$OUT/compile/compile_docs.txt" 2>&1
echo "compile_docs rc=$?"
python3 - "$OUT/compile/compile_docs.json" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception as e:
    print("no compile_docs.json:", e); sys.exit()
for k, x in r["compiled_steps"].items():
    print(k, x.get("graphs_after_step", x.get("error")), x.get("step_ms", ""), x.get("graph_breaks", ""), x.get("loss_diff"))
PY
