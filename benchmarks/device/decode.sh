#!/usr/bin/env bash
# Decode on one GPU: native tests of the sparse decode kernel and of captured-vs-eager greedy
# decoding, `ssa bench decode` (per-layer decode attention 8k/32k/128k at B=1/8, greedy tokens/s of
# the 300m preset at 32k/128k prompts, B=1/8, dense and sparse under the same CUDA-graph capture),
# and `ssa bench attention --forward-only` at 32k/64k/128k against the fastest dense attention.
# Time budget: 240 s in all (enforced below). Run from the repo root: OUT=dir bash benchmarks/device/decode.sh
set -uo pipefail
. benchmarks/device/common.sh decode 240

timeout "$(upto 50)" python3 -m pytest -q -p no:cacheprovider tests/test_decode_kernel.py \
  "tests/test_generation.py::test_captured_greedy_equals_eager" 2>&1 | tail -15 > "$DEST/tests.txt"
tail -1 "$DEST/tests.txt"

timeout "$(upto 120)" python3 -m ssa.cli bench decode --contexts 8192,32768,131072 --batches 1,8 \
  --gen-contexts 32768,131072 --new-tokens 48 --rep-ms 60 --json "$DEST/bench_decode.json" > "$DEST/bench_decode.txt" 2>&1
echo "bench decode rc=$?"

timeout "$(upto 70)" python3 -m ssa.cli bench attention --seq-lens 32768,65536,131072 --forward-only --rep-ms 100 \
  --json "$DEST/bench_attention.json" > "$DEST/bench_attention.txt" 2>&1
echo "bench attention rc=$?"

python3 - "$DEST" <<'PY' | tee "$DEST/summary.md"
import json, sys, pathlib
d = pathlib.Path(sys.argv[1])
def load(name):
    p = d / name
    return json.loads(p.read_text()) if p.is_file() else None
lines = ["| target | measured | met |", "|---|---|---|"]
dec = load("bench_decode.json")
if dec:
    for r in dec["attention"]:
        if r["context"] == 131072 and not r["ragged"]:
            lines.append(f"| decode attn 128k B={r['batch']} sparse >= 5x dense ({r['dense_baseline']}) "
                         f"| {r['speedup']:.2f}x ({r['sparse_graph_us']:.1f} vs {r['dense_graph_us']:.1f} us) | {r['speedup'] >= 5} |")
    by = {(r["context"], r["batch"], r["mode"]): r for r in dec["generate"]}
    for B in (1, 8):
        f, s = by.get((131072, B, "full")), by.get((131072, B, "sparse"))
        if f and s:
            x = s["tokens_per_s"] / f["tokens_per_s"]
            lines.append(f"| generate 300m 128k B={B} sparse >= 2x dense | {x:.2f}x ({s['tokens_per_s']:.0f} vs {f['tokens_per_s']:.0f} tok/s) | {x >= 2} |")
            if B == 1:
                lines.append(f"| generate 300m 128k B=1 sparse >= 1000 tok/s | {s['tokens_per_s']:.0f} tok/s | {s['tokens_per_s'] >= 1000} |")
    for r in dec.get("eager_loop", []):
        got = ", ".join(f"{k} {v}" for k, v in r.items() if k != "what")
        lines.append(f"| (diagnostic, 32k B=1) {r['what']} | {got} | - |")
att = load("bench_attention.json")
if att:
    for r in att["rows"]:
        goal = {65536: 4, 131072: 6}.get(r["T"])
        met = "-" if goal is None else str(r["fwd_speedup"] >= goal)
        lines.append(f"| prefill {r['T'] // 1024}k selection+sparse fwd vs {r['dense_baseline']}"
                     f"{'' if goal is None else f' >= {goal}x'} | {r['fwd_speedup']:.2f}x ({r['sparse_fwd_ms']:.2f} vs {r['sdpa_fwd_ms']:.2f} ms) | {met} |")
print("\n".join(lines))
PY
