#!/usr/bin/env bash
# The study of docs/study/: FullAttn, MoBA, NSA and SSA trained side by side on one H200 at the
# pilot shape (512 hidden, 8 layers, 8 query / 2 KV heads, 2048 tokens, block 16 x 16 blocks, GPT-2
# tokenizer, Gutenberg books), evaluated alike, claims R1-R6 judged. One call of at most 560 s.
#
#   OUT=/some/dir bash benchmarks/device/study.sh A [DATA_DIR]          # full, nsa, ssa with seed 0
#   OUT=/some/dir bash benchmarks/device/study.sh B STEPS [DATA_DIR]    # full, ssa with seed 1, moba with seed 0
#   OUT=/some/dir bash benchmarks/device/study.sh all [DATA_DIR]        # all six runs at once
#
# Part A sizes its training steps from a throughput probe so that the call ends in time, and prints
# them ("steps=N"); part B must train the same number of steps (the seed spread is only noise if
# nothing else differs), so it takes N as its second argument and fails early if N does not fit.
# NSA, the slowest method, trains in part A, so the step count it allows also fits part B.
# STUDY_STEPS=N fixes part A's (or all's) step count instead, e.g. to reach a token target; the
# call then fails early if the probe says N steps do not fit the budget.
# STUDY_COMPILE=1 compiles the decoder blocks and the loss (train.compile); if that part's probe
# fails, the part is retried once without compilation. Default 0 (the committed study ran eager).
# DATA_DIR (default .data) holds gutenberg/{train,val,test}.jsonl.gz and tokenizer/gpt2/.
# Writes $OUT/study/part-<P>/: compare.json, results/<run>.json, report/ (report.md, claims.json,
# PNGs when matplotlib is there), .jobs/ (per-process logs). Checkpoints stay in /tmp.
# Merge both parts afterwards (CPU is enough):
#   ssa compare --merge docs/study/part-A docs/study/part-B --out docs/study
set -uo pipefail
BUDGET=${BUDGET:-560}          # seconds for the whole call
# STUDY_EXTRA_SET: more --set overrides (a CPU smoke test shrinks the model and data with it)
START=$(date +%s)
PART=${1:-A}
case "$PART" in
  A) METHODS=full,nsa,ssa; SEEDS=0; STEPS=${STUDY_STEPS:-}; DATA=${2:-.data} ;;
  B) METHODS=full,moba,ssa; SEEDS="full=1 ssa=1 moba=0"; STEPS=${2:?part B needs the step count printed by part A}; DATA=${3:-.data} ;;
  all) METHODS=full,moba,nsa,ssa; SEEDS="full=0,1 ssa=0,1 moba=0 nsa=0"; STEPS=${STUDY_STEPS:-}; DATA=${2:-.data} ;;
  *) echo "usage: study.sh A [DATA_DIR] | study.sh B STEPS [DATA_DIR] | study.sh all [DATA_DIR]" >&2; exit 2 ;;
esac
OUT=${OUT:-/tmp/ssa_study}
DEST=$OUT/study/part-$PART
mkdir -p "$OUT/study"
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
for f in gutenberg/train.jsonl.gz gutenberg/val.jsonl.gz gutenberg/test.jsonl.gz tokenizer/gpt2/vocab.json; do
  [ -f "$DATA/$f" ] || { echo "missing $DATA/$f" >&2; exit 2; }
done
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())" \
  | tee "$OUT/study/env-$PART.txt"

study_compare() {  # $1: extra --set items; $2: a suffix for the log
  local left=$(( BUDGET - ($(date +%s) - START) - 25 ))
  rm -rf "$DEST" /tmp/ssa-study-runs
  timeout $(( left + 15 )) python3 -m ssa.cli compare --preset study --methods $METHODS --seeds $SEEDS \
    --set model.hidden_size=512 model.num_hidden_layers=8 model.num_attention_heads=8 model.num_key_value_heads=2 \
          model.block_size=16 model.block_count=16 model.pad_vocab_multiple=64 data.seq_len=2048 \
          train.micro_batch_size=16 train.grad_accum=1 $1 \
          "data.source=$DATA/gutenberg/train.jsonl.gz" "data.tokenizer=gpt2:$DATA/tokenizer/gpt2" ${STUDY_EXTRA_SET:-} \
    --time-budget $left --eval-reserve ${EVAL_RESERVE:-130} ${STEPS:+--steps $STEPS} \
    --block-counts 4,8,16,32,64 --eval-rows 64 --test-data "$DATA/gutenberg/test.jsonl.gz" \
    --attention-rows 4 --long-data "$DATA/gutenberg/test.jsonl.gz" --lengths 1,2,4 --extrapolation-docs 3 \
    --retrieval-multiples 0.5,1,2,4 --depths 0,0.5,1 --retrieval-samples 2 \
    --runs-dir /tmp/ssa-study-runs --out "$DEST" --no-progress > "$OUT/study/compare-$PART$2.log" 2>&1
  local rc=$?
  echo "compare rc=$rc" | tee -a "$OUT/study/compare-$PART$2.log"
  return $rc
}
# What is left of the budget after start-up, minus 25 s for the summary and the tarball.
if [ "${STUDY_COMPILE:-0}" = 1 ]; then
  study_compare train.compile=true "" \
    || { grep -q "throughput probe" "$OUT/study/compare-$PART.log" && study_compare train.compile=false -eager; }
else
  study_compare train.compile=false ""
fi

# Summary: steps, tokens and the claim verdicts of this part.
python3 - "$DEST" <<'PY'
import json, sys, pathlib
d = pathlib.Path(sys.argv[1])
rec = json.loads((d / "compare.json").read_text()) if (d / "compare.json").is_file() else {}
print(f"steps={rec.get('steps')} tokens_per_run={rec.get('tokens_per_run')} parallel={rec.get('parallel')} "
      f"wall_s={rec.get('wall_s')} trained={rec.get('trained')} failed={rec.get('failed')}")
print("probe:", json.dumps(rec.get("probe")))
c = d / "report" / "claims.json"
if c.is_file():
    claims = json.loads(c.read_text())
    for name, v in claims["claims"].items():
        print(f"{name:5s} {v['verdict']}")
    for r in claims["runs"]:
        m = r["metrics"]
        print(r["name"], {k: round(m[k], 3) for k in ("ppl.val.full", "ppl.val.sparse.n16", "ppl.test.full") if k in m})
PY
echo "study part $PART done in $(( $(date +%s) - START )) s"
