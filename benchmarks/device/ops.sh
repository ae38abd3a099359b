#!/usr/bin/env bash
# Native kernel checks on one GPU. Time budget: 150 s in all (each step gets what is left, via timeout).
#
# 1. benchmarks/select_budget_check.py: Triton selection vs the reference at T=8192, 16 query heads,
#    1 KV head (group 16), d=64, s=16, budgets 1,2,3,4,8,16, bf16 and fp32: differing rows, rows with a
#    duplicate block, rows missing their own block, rows differing beyond a near-tie swap.
# 2. The kernel tests natively (TRITON_INTERPRET unset; tests/conftest.py only sets it without CUDA),
#    serially, one pytest per file: the sweep, the kernel tests, non-finite inputs, block-index
#    checks, the alignment loss and the decode kernel.
# OPS_FILES="tests/a.py tests/b.py" (or "all": every tests/test_*.py) replaces the list of step 2, and
# OPS_SHARD=i/n keeps every n-th file from the i-th (0-based), so that the whole suite can be split
# over calls; with OPS_FILES set, step 1 runs only if OPS_SELECT_CHECK=1.
# Writes $OUT/ops/: select_budget.json, select_budget.log, junit-<file>.xml, pytest-<file>.log,
# summary.json; prints a summary table last.
set -uo pipefail  # run from the repository root
BUDGET=${OPS_BUDGET:-150}  # override only to smoke-test the script
START=$SECONDS
out="$OUT/ops"
mkdir -p "$out"
unset TRITON_INTERPRET
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
left() { echo $((BUDGET - 3 - (SECONDS - START))); }

if [ -z "${OPS_FILES:-}" ] || [ "${OPS_SELECT_CHECK:-0}" = 1 ]; then
  timeout 40 python benchmarks/select_budget_check.py --out "$out/select_budget.json" >"$out/select_budget.log" 2>&1
  echo "select_budget_check rc=$?" >>"$out/select_budget.log"
fi

files="tests/test_kernel_sweep.py tests/test_triton_kernels.py tests/test_nonfinite_inputs.py tests/test_block_indices.py tests/test_alignment_loss.py tests/test_decode_kernel.py"
case "${OPS_FILES:-}" in
  "") ;;
  all) files=$(ls tests/test_*.py) ;;
  *) files=$OPS_FILES ;;
esac
if [ -n "${OPS_SHARD:-}" ]; then
  i=${OPS_SHARD%/*}; n=${OPS_SHARD#*/}
  files=$(echo $files | tr ' ' '\n' | awk -v i="$i" -v n="$n" '(NR - 1) % n == i')
fi
for f in $files; do
  name=$(basename "$f" .py)
  t=$(left)
  if [ "$t" -le 5 ]; then echo "$name: skipped, no time left" >"$out/pytest-$name.log"; continue; fi
  timeout "$t" python -m pytest -q -p no:cacheprovider -p no:xdist -rfE "$f" --junitxml="$out/junit-$name.xml" \
    >"$out/pytest-$name.log" 2>&1
  echo "rc=$?" >>"$out/pytest-$name.log"
done

python - "$out" <<'PY'
import glob, json, os, sys
import xml.etree.ElementTree as ET
out = sys.argv[1]
summary = {"tests": {}, "select_budget": []}
for f in sorted(glob.glob(os.path.join(out, "pytest-*.log"))):
    name = os.path.basename(f)[7:-4]
    junit = os.path.join(out, f"junit-{name}.xml")
    row = {"status": "no junit (timeout or crash)"}
    if os.path.exists(junit):
        s = ET.parse(junit).getroot()
        s = s if s.tag == "testsuite" else s.find("testsuite")
        row = {k: int(s.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        row["seconds"] = float(s.get("time", 0))
        row["failed"] = [c.get("name") for c in s.iter("testcase") if c.find("failure") is not None or c.find("error") is not None]
    summary["tests"][name] = row
try:
    summary["select_budget"] = json.load(open(os.path.join(out, "select_budget.json")))
except Exception as e:
    summary["select_budget"] = f"missing: {e}"
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
print(f"{'test file':28} {'tests':>5} {'fail':>4} {'err':>4} {'skip':>4} {'s':>6}")
for name, r in summary["tests"].items():
    if "tests" in r:
        print(f"{name:28} {r['tests']:5} {r['failures']:4} {r['errors']:4} {r['skipped']:4} {r['seconds']:6.1f}  {' '.join(r['failed'])[:200]}")
    else:
        print(f"{name:28} {r['status']}")
print(f"{'dtype':9} {'n':>3} {'differ':>6} {'dup':>4} {'no-own':>6} {'wrong':>5}")
for r in summary["select_budget"] if isinstance(summary["select_budget"], list) else []:
    print(f"{r['dtype']:9} {r['n']:3} {r['differing_rows']:6} {r['duplicate_rows']:4} {r['missing_own_rows']:6} {r['beyond_tie_rows']:5}")
PY
echo "ops.sh total $((SECONDS - START)) s"
