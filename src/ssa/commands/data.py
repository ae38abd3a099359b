"""`ssa data prepare`: tokenize text corpora once into memory-mapped token shards.

    ssa data prepare --input books/*.jsonl.gz --tokenizer gpt2 --out data/books-gpt2 --workers 8
    ssa train --preset 300m --set data.source=shards:data/books-gpt2 data.tokenizer=gpt2 ...
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="data", metavar="WHAT", required=True)
    p = sub.add_parser("prepare", help="tokenize .jsonl/.jsonl.gz/.txt/.txt.gz files into token shards")
    p.add_argument("--input", nargs="+", required=True, metavar="FILE", help="training text files")
    p.add_argument("--val-input", nargs="+", default=None, metavar="FILE",
                   help="validation text files (default: a hash split of --input, see --val-fraction)")
    p.add_argument("--val-fraction", type=float, default=0.01,
                   help="share of --input documents held out for validation when --val-input is absent")
    p.add_argument("--tokenizer", default="gpt2", help="bytes, gpt2, gpt2:PATH or a tokenizer.json (default gpt2)")
    p.add_argument("--out", required=True, metavar="DIR", help="new directory for the shards and index.json")
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes (default 1)")
    p.add_argument("--shard-tokens", type=int, default=None, help="tokens per shard file (default 2**28)")
    p.add_argument("--text-field", default="text", help="JSONL field holding the text (default text)")
    p.add_argument("--max-documents", type=int, default=None, help="stop after this many documents per split")


def run(args) -> int:
    from ssa.training.shards import DEFAULT_SHARD_TOKENS, prepare_shards

    if args.max_documents is not None and args.max_documents < 1:
        raise ValueError(f"--max-documents must be >= 1, got {args.max_documents}")
    index = prepare_shards(
        args.input, args.out, args.tokenizer, val_inputs=args.val_input, val_fraction=args.val_fraction,
        workers=args.workers, shard_tokens=args.shard_tokens or DEFAULT_SHARD_TOKENS, text_field=args.text_field,
        max_documents=args.max_documents, progress=True,
    )
    total = {s: sum(e["tokens"] for e in entries) for s, entries in index["splits"].items()}
    print(f"wrote {args.out}: " + ", ".join(f"{s} {n:,} tokens" for s, n in total.items())
          + f" ({index['dtype']}, tokenizer {index['tokenizer']}); train with --set data.source=shards:{args.out} "
            f"data.tokenizer={index['tokenizer']}")
    return 0
