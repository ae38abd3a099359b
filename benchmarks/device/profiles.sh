#!/usr/bin/env bash
# Profiles that explain the missed speed targets, on one GPU (H200). Time budget: 200 s in all,
# enforced below (each part under its own timeout; a part that fails or runs out of time leaves the
# others' results, and every measurement is written as soon as it is taken).
#   train   the pilot training step (hidden 512, 8 layers, 8/2 heads, 2048 tokens, micro-batch 16,
#           vocabulary 50257 padded to 50304, bf16) through `Trainer.train_step` (the code path of
#           `ssa train`), FullAttn and SSA, beside benchmarks/plain_gpt.py's step at the same shape:
#           eager first, then with train.compile (the plain model compiled) while the budget lasts.
#           Kernel table by group, GPU kernel time vs wall time (host gap), launches per step.
#   decode  the 300m preset's greedy decode step at a 128k-token cache, B=1 and B=8, sparse and
#           full, as greedy_generate runs it (static cache, CUDA-graph replay); the cache is filled
#           with random K/V through its own per-layer write, not by a prefill.
#   tests   tests/test_gated_alignment.py natively (a subset, 25 s at most).
# Run from the repo root: OUT=dir bash benchmarks/device/profiles.sh
# Writes $OUT/profiles/: env.txt, train_eager.json, decode.json, train_compiled.json, *.log,
# native_gated_tests.txt,
# profiles_summary.md (printed last).
set -uo pipefail
BUDGET=200
OUT=${OUT:-/tmp/out}
D="$OUT/profiles"
mkdir -p "$D"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
END=$((SECONDS + BUDGET))
# Seconds for the next part: at most $1, and never past the budget (10 s kept for a kill grace and the summary).
left() { local r=$((END - SECONDS - 10)); [ "$r" -gt "$1" ] && echo "$1" || echo $((r > 1 ? r : 1)); }

python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" | tee "$D/env.txt"
git rev-parse HEAD >> "$D/env.txt" 2>/dev/null || true

# Overrides only for checking this script on a small machine (defaults: the measurement above).
SHAPE=${PROFILE_SHAPE:-pilot}
CONTEXT=${PROFILE_CONTEXT:-131072}
LAYERS=${PROFILE_DECODE_LAYERS:+--layers $PROFILE_DECODE_LAYERS}
P=benchmarks/profile_step.py
rm -f "$D"/train_eager.json "$D"/decode.json "$D"/train_compiled.json
timeout -k 5 "$(left 60)" python3 $P train "$D/train_eager.json" --shape "$SHAPE" --methods plain,full,ssa --steps 5 \
  --warmup 3 > "$D/train_eager.log" 2>&1
echo "train eager rc=$? ($SECONDS s)"
timeout -k 5 "$(left 55)" python3 $P decode "$D/decode.json" --context "$CONTEXT" $LAYERS --batches 1,8 \
  --modes sparse,full --steps 20 > "$D/decode.log" 2>&1
echo "decode rc=$? ($SECONDS s)"
# Native check of the fused gate-and-align kernel the SSA step now uses (bf16 output bit for bit).
timeout -k 5 "$(left 25)" python3 -m pytest -q -p no:cacheprovider tests/test_gated_alignment.py \
  -k "half or model" > "$D/native_gated_tests.txt" 2>&1
echo "native gated-alignment tests rc=$?: $(tail -1 "$D/native_gated_tests.txt")"
timeout -k 5 "$(left 200)" python3 $P train "$D/train_compiled.json" --shape "$SHAPE" --methods full,plain,ssa --compile \
  --steps 5 --warmup 4 > "$D/train_compiled.log" 2>&1
echo "train compiled rc=$? ($SECONDS s)"

for f in train_eager decode train_compiled; do grep -E "^\[|Error|error" "$D/$f.log" | tail -6; done
{ echo "# Profiles: $(head -1 "$D/env.txt"), commit $(sed -n 2p "$D/env.txt")"; echo
  python3 $P summary "$D/train_eager.json" "$D/train_compiled.json" "$D/decode.json"; } > "$D/profiles_summary.md" 2>&1
cat "$D/profiles_summary.md"
