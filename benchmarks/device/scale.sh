#!/usr/bin/env bash
# Step throughput, MFU and memory on one GPU (H200), budget 200 s for the whole call:
#   (a) the plain compiled reference (benchmarks/plain_gpt.py) vs our FullAttn training step at the
#       pilot shape (512 hidden, 8 layers, 8/2 heads, 2k context, micro-batch 16 x 2048, GPT-2
#       vocabulary padded to 50304), one model at a time in one process: tokens/s ratio (target
#       >= 0.85x) and (c) the peak memory of our step (target <= 12 GB);
#   (b) the 300m preset at 8k tokens, micro-batch 4, vocabulary padded to a multiple of 64, blocks
#       compiled: MFU of the full step (target >= 45%) and SSA step / full step (target <= 1.10x).
# Run from the repository root: OUT=/some/dir bash benchmarks/device/scale.sh
# Writes $OUT/scale/: env.txt, pilot.json/.txt, step300m.json/.txt, summary.md.
set -uo pipefail
BUDGET=200
START=$(date +%s)
OUT=${OUT:-/tmp/ssa_scale}
DEST=$OUT/scale
mkdir -p "$DEST"
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
left() { echo $(( BUDGET - ($(date +%s) - START) - 10 )); }

python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__, torch.cuda.get_device_name())" \
  | tee "$DEST/env.txt"
git rev-parse HEAD >> "$DEST/env.txt" 2>/dev/null

# (a) + (c): plain compiled vs ours (full, compiled blocks); warm-up covers compilation.
T=$(( $(left) * 45 / 100 ))
timeout $T python3 benchmarks/plain_gpt.py --methods plain,full --batch 16 --seq-len 2048 \
  --warmup 4 --steps 10 --json "$DEST/pilot.json" 2>&1 | tail -n 30 | tee "$DEST/pilot.txt"
echo "pilot rc=${PIPESTATUS[0]}" >> "$DEST/pilot.txt"

# (b): 300m at 8k, full and ssa, one at a time (timed windows after 3 warm-up steps).
T=$(( $(left) ))
timeout $T python3 -m ssa.cli bench train-step --preset 300m --seq-len 8192 --batch 4 --methods full,ssa \
  --compile --set model.pad_vocab_multiple=64 --steps 3 --windows 3 --one-at-a-time \
  --json "$DEST/step300m.json" 2>&1 | tail -n 20 | tee "$DEST/step300m.txt"
echo "step300m rc=${PIPESTATUS[0]}" >> "$DEST/step300m.txt"

python3 - "$DEST" <<'PY' | tee "$DEST/summary.md"
import json, sys, pathlib
d = pathlib.Path(sys.argv[1])
def load(name):
    try:
        return json.loads((d / name).read_text())
    except Exception as err:
        return {"error": str(err)}
pilot, step = load("pilot.json"), load("step300m.json")
rows = {r["model"]: r for r in pilot.get("rows", [])}
srows = {r["method"]: r for r in step.get("rows", [])}
print("| target | measured | goal | met |\n|---|---|---|---|")
def line(name, value, goal, ok):
    print(f"| {name} | {value} | {goal} | {'met' if ok else 'missed'} |")
if "plain" in rows and "full" in rows:
    r = rows["full"]["tokens_per_s"] / rows["plain"]["tokens_per_s"]
    line("pilot full / plain tokens/s", f"{r:.2f}x ({rows['full']['tokens_per_s']:,.0f} vs {rows['plain']['tokens_per_s']:,.0f})", ">= 0.85x", r >= 0.85)
    g = rows["full"]["peak_gib"] * 2**30 / 1e9
    line("pilot peak memory 16x2048", f"{g:.1f} GB (plain {rows['plain']['peak_gib'] * 2**30 / 1e9:.1f} GB)", "<= 12 GB", g <= 12)
else:
    print(f"| pilot | not measured: {pilot.get('error', 'missing rows')} | | missed |")
if "full" in srows:
    m = srows["full"]["mfu"]
    line("300m 8k full MFU", f"{100 * m:.1f}%" if m else "-", ">= 45%", bool(m) and m >= 0.45)
    if "ssa" in srows:
        r = srows["ssa"]["step_ms"] / srows["full"]["step_ms"]
        line("300m 8k ssa / full step", f"{r:.3f}x ({srows['ssa']['step_ms']:.1f} / {srows['full']['step_ms']:.1f} ms)", "<= 1.10x", r <= 1.10)
else:
    print(f"| 300m step | not measured: {step.get('error', 'missing rows')} | | missed |")
PY
echo "elapsed $(( $(date +%s) - START )) s of $BUDGET"
