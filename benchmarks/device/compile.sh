#!/usr/bin/env bash
# Compiled blocks over packed documents on one GPU (time budget: 240 s, enforced below):
#  1. the varlen flash kernel bounded by the row length vs by the longest document: max |diff| of
#     outputs and gradients, fwd+bwd ms (B=16, T=2048, 8/2 heads, 1/4/16 documents per row);
#  2. compiled (inductor) training steps of a 4-layer model over 8 batches with 2..12 documents
#     per row, per method/mode: step ms and dynamo graphs after each step (flat = no recompile);
#  3. the CPU test of the same property, run natively.
# Run from the repo root: OUT=dir bash benchmarks/device/compile.sh
set -uo pipefail
. benchmarks/device/common.sh compile 240
timeout "$(upto 60)" python3 -m pytest -q -p no:cacheprovider tests/test_compile_documents.py 2>&1 | tail -5 > "$DEST/tests.txt"
timeout "$(upto 170)" python3 benchmarks/device/compile_docs.py "$DEST/compile_docs.json" > "$DEST/compile_docs.txt" 2>&1
echo "compile_docs rc=$?"
python3 - "$DEST" <<'PY' | tee "$DEST/summary.md"
import json, sys
d = sys.argv[1]
print("tests:", open(f"{d}/tests.txt").read().strip().splitlines()[-1:] )
try:
    r = json.load(open(f"{d}/compile_docs.json"))
except Exception as e:
    print("no compile_docs.json:", e); sys.exit()
print("| docs/row | longest | max diff o,dq,dk | ms longest | ms row bound |")
for x in r["varlen_bound"]:
    print(f"| {x['docs_per_row']} | {x['longest']} | {x['max_abs_diff_o_dq_dk']} | {x['ms_fwd_bwd_longest']:.2f} | {x['ms_fwd_bwd_row']:.2f} |")
print("| method-mode | graphs after each step | step ms | breaks |")
for k, x in r["compiled_steps"].items():
    print(f"| {k} | {x.get('graphs_after_step', x.get('error'))} | {x.get('step_ms', '')} | {x.get('graph_breaks', '')} |")
PY
