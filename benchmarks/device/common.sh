# Shared preamble of the device scripts: `. benchmarks/device/common.sh NAME BUDGET_S` sets
# DEST=$OUT/NAME (created), the Python path and unbuffered output, `left` (seconds of the budget
# still unspent) and writes the versions and device to $DEST/env.txt.
BUDGET=$2
START=$(date +%s)
OUT=${OUT:-/tmp/ssa_out}
DEST=$OUT/$1
mkdir -p "$DEST"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())" \
  | tee "$DEST/env.txt"
