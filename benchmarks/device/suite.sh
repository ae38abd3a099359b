#!/usr/bin/env bash
# The native test suite on one GPU: every tests/test_*.py (or SUITE_FILES="tests/a.py ..."), each
# file in its own serial pytest process (no xdist, TRITON_INTERPRET unset, -v so that a file cut by
# the budget still shows each test's outcome), SUITE_LANES lanes side by side (default 6). Each lane
# takes the next file from one queue: files without a recorded time first, then longest first by the
# durations in benchmarks/results/h200/native_suite_*.json. SUITE_BUDGET (default 540 s) bounds the
# whole run; a file that would start with 5 s or less left is reported as skipped.
# Writes $OUT/suite/: summary.json (per file: tests, failures, errors, skipped, seconds, failed
# names, lane), summary.md (the table, printed last), logs.tar.gz (pytest logs and junit files).
set -uo pipefail  # run from the repository root
. benchmarks/device/common.sh suite "${SUITE_BUDGET:-540}"
unset TRITON_INTERPRET
LANES=${SUITE_LANES:-6}
work=$(mktemp -d)

python3 - "$work" ${SUITE_FILES:-} <<'PY'
import glob, json, os, sys
work, files = sys.argv[1], sys.argv[2:] or sorted(glob.glob("tests/test_*.py"))
known = {}
for f in glob.glob("benchmarks/results/h200/native_suite_*.json"):
    for name, row in json.load(open(f))["tests"].items():
        if "seconds" in row:
            known[name] = max(known.get(name, 0), row["seconds"])
# Longest first, files without a record before all others: free lanes take the next file in turn.
order = sorted(files, key=lambda f: -known.get(os.path.basename(f)[:-3], float("inf")))
open(os.path.join(work, "queue"), "w").write("".join(f + "\n" for f in order))
print(f"{len(order)} files, {sum(1 for f in order if os.path.basename(f)[:-3] not in known)} without a recorded time")
PY

# The next file of the shared queue (first line, removed under a lock); empty when none is left.
next_file() {
  ( flock 9
    f=$(head -n 1 "$work/queue")
    tail -n +2 "$work/queue" > "$work/queue.rest" && mv "$work/queue.rest" "$work/queue"
    echo "$f" ) 9>"$work/queue.lock"
}

run_lane() {
  local i=$1 f
  while f=$(next_file) && [ -n "$f" ]; do
    local name; name=$(basename "$f" .py)
    local t; t=$(( $(left) - 10 ))
    if [ "$t" -le 5 ]; then echo "skipped: no time left" >"$work/pytest-$name.log"; continue; fi
    echo "lane $i" >"$work/lane-$name"
    timeout -k 5 "$t" python3 -m pytest -v -p no:cacheprovider -p no:xdist -rfE "$f" \
      --junitxml="$work/junit-$name.xml" >"$work/pytest-$name.log" 2>&1 </dev/null
    echo "rc=$?" >>"$work/pytest-$name.log"
  done
}
for i in $(seq 0 $((LANES - 1))); do run_lane "$i" & done
wait

python3 - "$work" "$DEST" <<'PY'
import glob, json, os, re, sys
import xml.etree.ElementTree as ET
work, dest = sys.argv[1:]
rows = {}
for f in sorted(glob.glob(os.path.join(work, "pytest-*.log"))):
    name = os.path.basename(f)[7:-4]
    junit = os.path.join(work, f"junit-{name}.xml")
    text = open(f).read()
    done = re.findall(r"^(tests/\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)", text, re.M)
    row = {"status": (text.strip().splitlines() or ["no output"])[-1],
           "outcomes_before_cut": {k: sum(1 for _, o in done if o == k) for k in {o for _, o in done}},
           "failed": [t.split("::", 1)[-1] for t, o in done if o in ("FAILED", "ERROR")]}
    if os.path.exists(junit):
        s = ET.parse(junit).getroot()
        s = s if s.tag == "testsuite" else s.find("testsuite")
        row = {k: int(s.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        row["seconds"] = float(s.get("time", 0))
        row["failed"] = [c.get("name") for c in s.iter("testcase")
                         if c.find("failure") is not None or c.find("error") is not None]
    lane = os.path.join(work, f"lane-{name}")
    row["lane"] = open(lane).read().strip() if os.path.exists(lane) else None
    rows[name] = row
json.dump({"tests": rows}, open(os.path.join(dest, "summary.json"), "w"), indent=1)
done = [r for r in rows.values() if "tests" in r]
lines = ["| test file | tests | failed | errors | skipped | s | failing tests |", "|---|---|---|---|---|---|---|"]
for name, r in rows.items():
    if "tests" in r:
        lines.append(f"| {name} | {r['tests']} | {r['failures']} | {r['errors']} | {r['skipped']} | {r['seconds']:.1f} | "
                     f"{' '.join(r['failed'])[:300]} |")
    else:
        lines.append(f"| {name} | - | - | - | - | - | {r['status']}; before the cut: {r['outcomes_before_cut']} "
                     f"{' '.join(r['failed'])[:300]} |")
lines.append(f"\n{len(done)} of {len(rows)} files ran: {sum(r['tests'] for r in done)} tests, "
             f"{sum(r['failures'] + r['errors'] for r in done)} failed, {sum(r['skipped'] for r in done)} skipped")
open(os.path.join(dest, "summary.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
tar -czf "$DEST/logs.tar.gz" -C "$work" . 2>/dev/null
echo "suite.sh total $(( $(date +%s) - START )) s"
