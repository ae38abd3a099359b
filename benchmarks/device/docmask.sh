#!/usr/bin/env bash
# Packed documents (cu_seqlens) on one H200, at most 90 s:
#  1. native tests of the packed-document kernels against the reference (tests/test_documents.py);
#  2. benchmarks/bench_documents.py at 8k and 32k tokens, documents of mean 2k tokens, 300m attention
#     shape (16 query / 1 KV head, d 64, block 16 x 16 blocks, bf16): packed selection, sparse
#     forward and forward+backward vs the unmasked kernels at the same length (target <= 1.15x), and
#     the dense options (unmasked SDPA, varlen flash, SDPA per document, FlexAttention document mask).
# Writes $OUT/docmask/: tests.txt, documents.json, bench.txt; prints the summary table last.
set -uo pipefail
. benchmarks/device/common.sh docmask 90
timeout $(( $(left) > 35 ? 30 : $(left) / 2 )) python3 -m pytest -q -x -p no:cacheprovider tests/test_documents.py \
  -k "triton or reference or nsa or block_table" > "$DEST/tests.txt" 2>&1
echo "tests rc=$? $(tail -1 "$DEST/tests.txt")"

T_LEFT=$(( $(left) - 5 ))
timeout "$T_LEFT" python3 benchmarks/bench_documents.py --out "$DEST" --lengths 8192 32768 --mean-doc 2048 \
  --deadline-s $(( T_LEFT - 25 )) > "$DEST/bench.txt" 2>&1
echo "bench rc=$?"
tail -n 6 "$DEST/bench.txt"
