#!/usr/bin/env bash
# NSA's compressed and sliding-window branches over packed documents on one H200, at most 120 s:
#  1. native tests: tests/test_nsa_documents.py (packed vs document by document, forward and
#     backward) and the NSA/packed cases of tests/test_documents.py;
#  2. benchmarks/bench_nsa_documents.py at the pilot attention shape (16 rows x 2048 tokens, 8 query /
#     2 KV heads, d 64, block 16, window 128, bf16, documents of mean 600 tokens): forward+backward
#     of each branch unpacked on rows, packed with cu_seqlens (one launch), and looped per document.
# Writes $OUT/nsadocs/: env.txt, tests.txt, nsa_documents.json, bench.txt; prints the summary last.
set -uo pipefail
. benchmarks/device/common.sh nsadocs 120
timeout 50 python3 -m pytest -q -p no:cacheprovider tests/test_nsa_documents.py tests/test_documents.py \
  -k "nsa or packed_batch or triton" > "$DEST/tests.txt" 2>&1
echo "tests rc=$? $(tail -1 "$DEST/tests.txt")"

timeout $(( $(left) - 5 )) python3 benchmarks/bench_nsa_documents.py --out "$DEST" > "$DEST/bench.txt" 2>&1
echo "bench rc=$?"
tail -n 4 "$DEST/bench.txt"
