#!/usr/bin/env bash
# Selection kernel timing after the launch settings became `SelectLaunch` values. Time budget: 120 s
# in all (enforced with timeout), one GPU.
#
# benchmarks/ab.py, forward part only, at T = 8k, 32k, 128k (B=1, HQ=16, HK=1, d=64, s=16, n=16, bf16):
# selection alone for the default settings and each alternative of ab.py's SELECT_VARIANTS (rows
# that differ from the public op's answer are counted: any difference is a bug, the settings must not
# change the answer), then the sparse forward (selection + attention) for the default and the two
# fastest alternatives, and SDPA's causal forward for the ratio. Compare `select_default_ms` with the
# H100/H200 numbers in benchmarks/RESULTS.md: the default kernel path is meant to be unchanged.
# Writes $OUT/kernels/ab.json and ab.txt; prints the table last.
# KERNELS_DRY=1: a CPU smoke test under the interpreter at T=64 (checks the script, not the GPU).
set -uo pipefail  # run from the repository root
out="$OUT/kernels"
mkdir -p "$out"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
if [ "${KERNELS_DRY:-0}" = 1 ]; then
  export TRITON_INTERPRET=1
  args=(--dry --fwd-lens 64)
else
  unset TRITON_INTERPRET
  args=(--fwd-lens 8192,32768,131072)
fi
timeout 115 python benchmarks/ab.py "$out" --parts forward "${args[@]}" >"$out/ab.txt" 2>&1
echo "ab.py rc=$?" >>"$out/ab.txt"
grep -v "^{" "$out/ab.txt" | grep -v "Warning\|warn" | tail -12
