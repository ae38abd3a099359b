#!/usr/bin/env bash
# One call on one GPU (H200), at most about 570 s:
#  1. compiled training steps over packed documents for every method (compile_docs.py --steps-only):
#     graphs after each step, graph breaks and their reasons, loss against the eager model;
#  2. the training-speed targets (scale.sh: pilot vs the plain compiled script, 300m MFU, SSA/full);
#  3. the kernel profile of the compiled 300m step, full and ssa (profile_step.py train --shape 300m);
#  4. native test files (SUITE_FILES, suite.sh) in the time left.
# Everything is packed into $OUT/session.tgz. Run from the repository root: OUT=dir bash benchmarks/device/session_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
export OUT PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
T0=$(date +%s)
mkdir -p "$OUT/compile" "$OUT/profiles"
timeout -k 5 140 python3 benchmarks/device/compile_docs.py "$OUT/compile/compile_docs.json" --steps-only > "$OUT/compile/compile_docs.txt" 2>&1
echo "compile_docs rc=$? ($(( $(date +%s) - T0 )) s)"
python3 - "$OUT/compile/compile_docs.json" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception as e:
    print("no compile_docs.json:", e); sys.exit()
for k, x in r["compiled_steps"].items():
    print(k, x.get("graphs_after_step", x.get("error")), x.get("step_ms", ""), x.get("graph_breaks", ""), x.get("loss_diff"))
    for reason, n in (x.get("break_reasons") or {}).items():
        print("   break", n, reason[:300])
PY
bash benchmarks/device/scale.sh | tail -8
timeout -k 5 130 python3 benchmarks/profile_step.py train "$OUT/profiles/train300m.json" --shape 300m \
  --methods full,ssa --compile --steps 3 --warmup 3 > "$OUT/profiles/train300m.log" 2>&1
echo "profile 300m rc=$? ($(( $(date +%s) - T0 )) s)"
python3 benchmarks/profile_step.py summary "$OUT/profiles/train300m.json" > "$OUT/profiles/summary300m.md" 2>&1
head -12 "$OUT/profiles/summary300m.md"
if [ -n "${SUITE_FILES:-}" ]; then
  SUITE_BUDGET=$(( 570 - ($(date +%s) - T0) )) bash benchmarks/device/suite.sh | tail -20
fi
tar -czf "$OUT/session.tgz" -C "$OUT" compile scale profiles $( [ -d "$OUT/suite" ] && echo suite ) && \
  rm -rf "$OUT/compile" "$OUT/scale" "$OUT/profiles" "$OUT/suite"
echo "session_check total $(( $(date +%s) - T0 )) s"
