# Shared preamble of the device scripts: `. benchmarks/device/common.sh NAME BUDGET_S` sets
# DEST=$OUT/NAME (created), the Python path and unbuffered output, `left` (seconds of the budget
# still unspent), `upto N` (a part's timeout: N seconds, or less so that 5 s of the budget stay) and
# writes the versions, device and commit to $DEST/env.txt.
BUDGET=$2
START=$(date +%s)
OUT=${OUT:-/tmp/ssa_out}
DEST=$OUT/$1
mkdir -p "$DEST"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
upto() { local r=$(( $(left) - 5 )); [ "$r" -gt "$1" ] && echo "$1" || echo $(( r > 1 ? r : 1 )); }
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())" \
  | tee "$DEST/env.txt"
git rev-parse HEAD >> "$DEST/env.txt" 2>/dev/null || true
