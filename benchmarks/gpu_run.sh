#!/usr/bin/env bash
# One device session: native kernel tests, then the attention and train-step benchmarks.
# Usage (repo root, on the GPU machine): OUT=/some/dir bash benchmarks/gpu_run.sh [tests|sweep|bench|all|ab|profile|ab5|final|last|closing]
# ab: native tests (two pytest runs, 45 + 75 s at most), then benchmarks/ab.py (old vs new variants in one
#     process, the rest of ~288 s).
set -o pipefail
OUT=${OUT:-/tmp/ssa_bench}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
what=${1:-all}
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())" | tee "$OUT/env.txt"
if [ "$what" = ab ]; then
  # Whole command <= ~290 s: new-variant tests first (they are last in the file), then the rest.
  timeout 45 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py -k "v2 or fused or inverted" -rfE > "$OUT/tests.txt" 2>&1
  echo "tests(new) rc=$?" >> "$OUT/tests.txt"
  timeout 75 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py -k "not (v2 or fused or inverted)" -rfE >> "$OUT/tests.txt" 2>&1
  echo "tests(rest) rc=$?" >> "$OUT/tests.txt"
  grep -E "passed|failed|rc=|^(FAILED|ERROR)" "$OUT/tests.txt" | tail -20
  left=$((288 - SECONDS))
  echo "ab gets ${left}s"
  timeout $left python3 benchmarks/ab.py "$OUT" 2>&1 | tee "$OUT/ab.txt" | grep -v "^{"
  grep -E "passed|failed|rc=" "$OUT/tests.txt" | tail -4
  exit 0
fi
if [ "$what" = profile ] || [ "$what" = ab5 ]; then
  # Run 5. profile (call 1): native tests of the new selection variants, Nsight Compute on the
  # selection kernels, torch.profiler of the train step, then the variant A/B (benchmarks/ab.py).
  # ab5 (call 2): native tests, then the A/B alone. ~560 s at most.
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py tests/test_alignment_loss.py \
    -k "v3 or align or ties or (select and matches)" -rfE > "$OUT/tests.txt" 2>&1; echo "tests rc=$?" >> "$OUT/tests.txt"
  tail -3 "$OUT/tests.txt"
  if [ "$what" = profile ]; then
    NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    SECTIONS="--section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis --section InstructionStats"
    for v in v1:'{"KERNEL":"v1"}' v3_bn32:'{"KERNEL":"v3","BLOCK_TILE":32}'; do
      timeout 60 "$NCU" --clock-control none $SECTIONS -k regex:_select_kernel --launch-skip 1 --launch-count 1 \
        python3 benchmarks/ncu_select.py 32768 "${v#*:}" > "$OUT/ncu_${v%%:*}.txt" 2>&1
      grep -E "Duration|Registers Per|Achieved Occupancy|Theoretical Occupancy|Issue Slots Busy|No Eligible|Warp Cycles Per Issued|Executed Ipc A" "$OUT/ncu_${v%%:*}.txt" | head -12
    done
    timeout 90 python3 benchmarks/profile_step.py "$OUT/profile_step.json" 2>&1 | tee "$OUT/profile_step.txt" | tail -40
  fi
  left=$((560 - SECONDS)); echo "ab gets ${left}s"
  timeout $left python3 benchmarks/ab.py "$OUT" 2>&1 | tee "$OUT/ab.txt" | grep -v "^{"
  exit 0
fi
if [ "$what" = closing ]; then
  # Run 5, call 5: the final defaults (NUM_STAGES=3): v3 native test at the benchmark shape, the
  # full `ssa bench attention` table and `ssa bench train-step`. ~330 s.
  timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py -k "v3_benchmark or through_dispatch" \
    -rfE > "$OUT/tests.txt" 2>&1; echo "tests rc=$?" >> "$OUT/tests.txt"; tail -2 "$OUT/tests.txt"
  timeout 160 python3 -m ssa.cli bench attention --json "$OUT/attention.json" 2>&1 | tee "$OUT/attention.txt" | grep -v "^{"
  timeout 110 python3 -m ssa.cli bench train-step --windows 4 --json "$OUT/train_step.json" 2>&1 | tee "$OUT/train_step.txt" | grep -v "^[{#]"
  exit 0
fi
if [ "$what" = last ]; then
  # Run 5, call 4: native tests not reached in call 3 (alignment loss, v3 at the benchmark shape),
  # Nsight Compute of the default selection kernel, launch-shape variants at 64k/128k, and a repeat
  # of the long-T forward benchmark.
  timeout 130 python3 -m pytest -q -p no:cacheprovider tests/test_alignment_loss.py tests/test_triton_kernels.py \
    -k "align or v3_benchmark or v3_loose or v3_matches" -rfE > "$OUT/tests.txt" 2>&1; echo "tests rc=$?" >> "$OUT/tests.txt"
  grep -E "passed|failed|rc=|^(FAILED|ERROR)" "$OUT/tests.txt" | tail -8
  timeout 60 python3 benchmarks/profile_step.py "$OUT/host_time.json" --host-only 2>&1 | tail -3
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  timeout 70 "$NCU" --clock-control none --section SpeedOfLight --section Occupancy --section WarpStateStats \
    --section SchedulerStats --section ComputeWorkloadAnalysis --section InstructionStats \
    --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active.ratio,regex:sm__inst_executed_pipe_.*.avg.pct_of_peak_sustained_active" \
    -k regex:_select_kernel --launch-skip 1 --launch-count 1 python3 benchmarks/ncu_select.py 32768 '{}' > "$OUT/ncu_v3_default.txt" 2>&1
  grep -E "Duration|Registers Per|Achieved Occupancy|Issue Slots Busy|stalled_(barrier|short|long|math|wait|mio|not_sel|selected|dispatch|no_inst|branch)|pipe_(alu|fma|fmaheavy|xu|lsu|uniform|tensor).*pct" "$OUT/ncu_v3_default.txt" | head -30
  timeout 150 python3 benchmarks/ab.py "$OUT" --fwd-lens 65536,131072 --parts forward 2>&1 | tee "$OUT/ab.txt" | grep -v "^{"
  left=$((585 - SECONDS)); echo "bench gets ${left}s"
  timeout $left python3 -m ssa.cli bench attention --seq-lens 65536,131072 --rep-ms 400 --flex-max-len 0 \
    --json "$OUT/attention_long.json" 2>&1 | tee "$OUT/attention_long.txt" | grep -v "^{"
  exit 0
fi
if [ "$what" = final ]; then
  # Run 5, call 3: the defaults after the A/B. Native tests of selection (both kernels) and of the
  # alignment loss, `ssa bench attention`, `ssa bench train-step` (GPT-2 vocabulary and padded to
  # 50304), and the step profile. ~580 s at most.
  timeout 140 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py tests/test_alignment_loss.py \
    -k "select or v3 or ties or align" -rfE > "$OUT/tests.txt" 2>&1; echo "tests rc=$?" >> "$OUT/tests.txt"
  tail -3 "$OUT/tests.txt"
  timeout 170 python3 -m ssa.cli bench attention --json "$OUT/attention.json" 2>&1 | tee "$OUT/attention.txt" | grep -v "^{"
  timeout 120 python3 -m ssa.cli bench train-step --json "$OUT/train_step.json" 2>&1 | tee "$OUT/train_step.txt" | grep -v "^[{#]"
  timeout 70 python3 -m ssa.cli bench train-step --methods full,ssa --vocab-size 50304 --windows 3 \
    --json "$OUT/train_step_v50304.json" 2>&1 | tee "$OUT/train_step_v50304.txt" | grep -v "^[{#]"
  left=$((585 - SECONDS)); echo "profile gets ${left}s"
  timeout $left python3 benchmarks/profile_step.py "$OUT/profile_step.json" 2>&1 | tee "$OUT/profile_step.txt" | tail -32
  exit 0
fi
if [ "$what" != bench ]; then
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py 2>&1 | tail -30 | tee "$OUT/tests.txt"
fi
if [ "$what" = all ] || [ "$what" = sweep ]; then
  timeout 100 python3 benchmarks/sweep_select.py "$OUT/sweep_select.json" "$OUT/best_select.json" 2>&1 | tee "$OUT/sweep_select.txt"
fi
if [ "$what" != tests ] && [ "$what" != sweep ]; then
  if [ -f "$OUT/best_select.json" ]; then
    ATTN_ARGS="${ATTN_ARGS:-} --select-config $OUT/best_select.json"
    TRAIN_ARGS="${TRAIN_ARGS:-} --select-config $OUT/best_select.json"
  fi
  timeout 170 python3 -m ssa.cli bench attention ${ATTN_ARGS:-} --json "$OUT/attention.json" 2>&1 | tee "$OUT/attention.txt"
  timeout 100 python3 -m ssa.cli bench train-step ${TRAIN_ARGS:-} --json "$OUT/train_step.json" 2>&1 | tee "$OUT/train_step.txt"
fi
