#!/usr/bin/env bash
# Native runs of the sparse-attention kernels (tests, benchmarks, profiles). Run from the repo root on the GPU machine:
#   OUT=/some/dir bash benchmarks/gpu_run.sh [tests|bench|profile|ab|all]
# tests:   native kernel tests (selection, attention, alignment loss, decode), 200 s at most
# bench:   `ssa bench attention` and `ssa bench train-step` (GPT-2 vocabulary, and padded to 50304)
# profile: Nsight Compute of the default selection kernel at 32k, torch.profiler of the train step
#          (kernel time by group, GPU busy vs wall time per step, launches per step)
# ab:      selection launch settings side by side (benchmarks/ab.py: selection alone, sparse forward,
#          the train step at the defaults)
# all:     tests, then bench
set -o pipefail
OUT=${OUT:-/tmp/ssa_bench}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
what=${1:-all}
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())" | tee "$OUT/env.txt"

if [ "$what" = tests ] || [ "$what" = all ]; then
  # Triton compiles every shape on first use, so a full native run takes minutes.
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py tests/test_alignment_loss.py \
    tests/test_decode_kernel.py -rfE > "$OUT/tests.txt" 2>&1
  echo "tests rc=$?" >> "$OUT/tests.txt"
  grep -E "passed|failed|rc=|^(FAILED|ERROR)" "$OUT/tests.txt" | tail -8
fi

if [ "$what" = bench ] || [ "$what" = all ]; then
  timeout 170 python3 -m ssa.cli bench attention --json "$OUT/attention.json" 2>&1 | tee "$OUT/attention.txt" | grep -v "^{"
  timeout 120 python3 -m ssa.cli bench train-step --json "$OUT/train_step.json" 2>&1 | tee "$OUT/train_step.txt" | grep -v "^[{#]"
  timeout 80 python3 -m ssa.cli bench train-step --methods full,ssa --vocab-size 50304 --windows 3 \
    --json "$OUT/train_step_v50304.json" 2>&1 | tee "$OUT/train_step_v50304.txt" | grep -v "^[{#]"
fi

if [ "$what" = profile ]; then
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  timeout 70 "$NCU" --clock-control none --section SpeedOfLight --section Occupancy --section WarpStateStats \
    --section SchedulerStats --section ComputeWorkloadAnalysis --section InstructionStats \
    --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active.ratio,regex:sm__inst_executed_pipe_.*.avg.pct_of_peak_sustained_active" \
    -k regex:_select_kernel --launch-skip 1 --launch-count 1 python3 benchmarks/ncu_select.py 32768 '{}' > "$OUT/ncu_select.txt" 2>&1
  grep -E "Duration|Registers Per|Achieved Occupancy|Issue Slots Busy|stalled_(barrier|short|long|math|wait|not_sel)|pipe_(alu|fma|xu|lsu|tensor)\.avg" "$OUT/ncu_select.txt" | head -20
  # The 300m train step as `ssa train` runs it: kernel groups, GPU busy vs wall (host gap), launches.
  timeout 150 python3 benchmarks/profile_step.py train "$OUT/profile_step.json" --shape 300m --methods full,ssa \
    2>&1 | tee "$OUT/profile_step.txt" | tail -4
  python3 benchmarks/profile_step.py summary "$OUT/profile_step.json" | head -40
fi

if [ "$what" = ab ]; then
  timeout 500 python3 benchmarks/ab.py "$OUT" 2>&1 | tee "$OUT/ab.txt" | grep -v "^{"
fi
