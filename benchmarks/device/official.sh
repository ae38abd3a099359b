#!/usr/bin/env bash
# Converted checkpoints vs the released SSA modeling code, on one GPU. Time budget: 60 s (timeout below).
#
# Needs .scratch/official/ beside the repository root (never committed): src/ (the released modeling and
# config files, one package per method, their modified native_sparse_attention ops, a flash-attn
# stand-in for NSA's sliding window) and wheels/ (transformers 4.54, liger-kernel 0.6.2, fla-core 0.4.0
# and what they import), installed into a temporary folder that only the released code's process sees.
# Writes $OUT/official/: official_compare.json (per method and mode: largest |logit| difference,
# with our selection and with the released normalisation, and how many selected sets differ),
# official_child.log, pip.log, run.log.
set -uo pipefail  # run from the repository root
budget=60
out="$OUT/official"
mkdir -p "$out"
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
start=$SECONDS
wheels=$(ls .scratch/official/wheels/*.whl | grep -v charset_normalizer)
timeout 25 python -m pip install -q --no-deps --no-index --no-compile --target "$site" $wheels \
  >"$out/pip.log" 2>&1 || echo "pip install of the released code's packages failed (see pip.log)"
# requests runs without it (a warning), and its wheel is built for one Python version only
timeout 5 python -m pip install -q --no-deps --no-index --no-compile --target "$site" .scratch/official/wheels/charset_normalizer-*.whl \
  >>"$out/pip.log" 2>&1 || true
left=$((budget - 2 - (SECONDS - start)))
PYTHONPATH=src timeout "$left" python benchmarks/official_compare.py --official-dir .scratch/official \
  --site "$site" --work "$site/work" --out "$out" --seq 256 --budget $((left - 2)) >"$out/run.log" 2>&1
rc=$?
echo "official comparison exit $rc after $((SECONDS - start)) s"
tail -n 8 "$out/run.log"
