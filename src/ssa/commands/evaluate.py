"""`ssa eval CHECKPOINT`: perplexity over budgets, attention statistics, length extrapolation,
retrieval and commonsense multiple choice. Prints tables and writes RUN_DIR/eval/<kind>.json."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SECTIONS = ("perplexity", "attention", "extrapolation", "retrieval", "commonsense")
DEFAULT_TASKS = "hellaswag,piqa,arc_easy,arc_challenge"


def _ints(name):
    def parse(text):
        try:
            vals = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a comma list of integers, got {text!r}") from None
        if not vals or any(v < 1 for v in vals):
            raise argparse.ArgumentTypeError(f"{name} must be a comma list of integers >= 1, got {text!r}")
        return vals
    return parse


def _floats(name, lo=0.0, hi=None):
    def parse(text):
        try:
            vals = [float(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a comma list of numbers, got {text!r}") from None
        if not vals or any(v < lo or (hi is not None and v > hi) for v in vals):
            rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"{name} values must be {rng}, got {text!r}")
        return vals
    return parse


def _words(name, allowed):
    def parse(text):
        vals = [x.strip() for x in text.split(",") if x.strip()]
        bad = [v for v in vals if v not in allowed]
        if not vals or bad:
            raise argparse.ArgumentTypeError(f"{name} must be a comma list of {allowed}, got {text!r}")
        return vals
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run directory (its latest checkpoint) or a checkpoint directory")
    g = p.add_argument_group("what to evaluate (default: --perplexity)")
    g.add_argument("--perplexity", action="store_true", help="held-out perplexity / bits per byte: full + sparse budget sweep")
    g.add_argument("--attention", action="store_true", help="attention sparsity, entropy, KL, sink mass, distances per layer/head")
    g.add_argument("--extrapolation", action="store_true", help="PG-19-style perplexity at 1x..8x the training length, with/without llama3 RoPE scaling")
    g.add_argument("--retrieval", action="store_true", help="passkey retrieval grid (length x depth): exact match and likelihood rank")
    g.add_argument("--commonsense", nargs="?", const=DEFAULT_TASKS, metavar="TASKS",
                   help=f"multiple-choice acc / acc_norm; comma list of task names or .jsonl files (default {DEFAULT_TASKS})")
    g.add_argument("--all", action="store_true", help="all of the above")

    g = p.add_argument_group("common")
    g.add_argument("--modes", type=_words("--modes", ("full", "sparse")), default=None,
                   help="inference modes (default: full,sparse; nsa: sparse)")
    g.add_argument("--block-size", type=int, default=None, help="block size at inference (default: the checkpoint's)")
    g.add_argument("--block-count", type=int, default=None,
                   help="sparse budget for attention/extrapolation/retrieval/commonsense (default: the checkpoint's)")
    g.add_argument("--limit", type=int, default=None,
                   help="quick checks: rows (perplexity, attention), documents (extrapolation), items per task "
                        "(commonsense), samples per grid cell (retrieval)")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    g.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16")
    g.add_argument("--out-dir", default=None, help="where <kind>.json go (default RUN_DIR/eval)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--tag", default=None,
                   help="write <kind>-<TAG>.json instead of <kind>.json (e.g. a second data set); the report shows both")

    g = p.add_argument_group("perplexity / attention")
    g.add_argument("--data", default="val", help="'val' (the run's held-out split) or a .txt/.jsonl/.jsonl.gz file")
    g.add_argument("--text-field", default="text", help="JSONL field holding the text")
    g.add_argument("--seq-len", type=int, default=None, help="row length (default: the training length)")
    g.add_argument("--block-counts", type=_ints("--block-counts"), default=None,
                   help="sparse budgets for the sweep (default: powers of two with receptive field 64..min(4096, seq-len))")

    g = p.add_argument_group("extrapolation")
    g.add_argument("--long-data", default=None,
                   help="long documents: a .txt/.jsonl/.jsonl.gz file, or 'val' (the run's held-out stream cut into "
                        "--doc-tokens pieces); default: gutenberg/test.jsonl.gz of the data folder")
    g.add_argument("--lengths", type=_floats("--lengths", lo=0.01), default=[1, 2, 4, 8],
                   help="evaluation lengths as multiples of the training length (default 1,2,4,8)")
    g.add_argument("--rope", type=_words("--rope", ("none", "llama3")), default=["none", "llama3"],
                   help="RoPE variants: none (as trained), llama3 (scaled by L/train_len)")
    g.add_argument("--stride", type=int, default=None, help="sliding-window stride (default train_len/2)")
    g.add_argument("--doc-tokens", type=int, default=None,
                   help="tokens scored per document (default 2 x the longest length)")

    g = p.add_argument_group("retrieval")
    g.add_argument("--retrieval-lengths", type=_ints("--retrieval-lengths"), default=None,
                   help="context lengths in tokens (default: 0.5, 1, 2 x training length)")
    g.add_argument("--depths", type=_floats("--depths", 0.0, 1.0), default=[0.0, 0.25, 0.5, 0.75, 1.0],
                   help="needle depths as fractions of the haystack")
    g.add_argument("--haystack", type=_words("--haystack", ("filler", "text")), default=["filler"],
                   help="filler (repeated sentences) and/or text (real book text)")
    g.add_argument("--num-distractors", type=int, default=9, help="distractor keys for the likelihood rank")
    g.add_argument("--seed", type=int, default=0)

    g = p.add_argument_group("commonsense")
    g.add_argument("--num-fewshot", type=int, default=0)
    g.add_argument("--tasks-dir", default=None, help="folder with hellaswag.jsonl.gz, piqa.jsonl, ... (default: eval/ of the data folder)")


def _section_list(args) -> list[str]:
    chosen = [s for s in SECTIONS if (getattr(args, s) if s != "commonsense" else args.commonsense)]
    if args.all:
        chosen = list(SECTIONS)
        args.commonsense = args.commonsense or DEFAULT_TASKS
    return chosen or ["perplexity"]


def _check_args(args) -> None:
    for name in ("block_size", "block_count", "limit", "seq_len", "stride", "doc_tokens", "batch_size"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if args.seq_len is not None and args.seq_len < 2:
        # A row of L tokens scores its last L - 1: one token scores nothing.
        raise ValueError(f"--seq-len must be >= 2 (a row of L tokens scores L - 1 of them), got {args.seq_len}")
    if args.doc_tokens is not None and args.doc_tokens < 2:
        raise ValueError(f"--doc-tokens must be >= 2 (a document of N tokens scores N - 1 of them), got {args.doc_tokens}")
    if args.tag is not None:
        import re

        if not re.fullmatch(r"[A-Za-z0-9_]+", args.tag):
            raise ValueError(f"--tag must be letters, digits or underscores, got {args.tag!r}")
    if args.num_fewshot < 0:
        raise ValueError(f"--num-fewshot must be >= 0, got {args.num_fewshot}")
    if args.num_distractors < 1:
        raise ValueError(f"--num-distractors must be >= 1, got {args.num_distractors}")


def run(args) -> int:
    import torch

    from ssa.evaluation import loading
    from ssa.evaluation.results import write_result

    _check_args(args)
    sections = _section_list(args)
    _check_inputs(args, sections)  # every file a section needs, before minutes of evaluation
    loaded = loading.load(args.checkpoint, device=args.device, dtype=args.dtype)
    _check_lengths(loaded, args, sections)
    torch.manual_seed(args.seed)
    modes = args.modes or list(loaded.modes)
    if loaded.method == "nsa" and "full" in modes:
        raise ValueError("--modes: method 'nsa' has no full-attention stream; use --modes sparse")
    out_dir = Path(args.out_dir) if args.out_dir else loaded.eval_dir
    meta = loaded.describe()
    progress = not args.no_progress
    print(f"ssa eval: {meta['checkpoint']} (method {meta['method']}, train_len {meta['train_len']}, "
          f"block_size {meta['block_size']}, block_count {meta['block_count']})")
    for section in sections:
        fn = globals()[f"_eval_{section}"]
        settings, payload, text = fn(loaded, args, modes, progress)
        stem = f"{section}-{args.tag}" if args.tag else section
        path = write_result(out_dir / f"{stem}.json", section, meta, settings, payload, tag=args.tag)
        print(f"\n== {section} ==\n{text}\n-> {path}")
        sys.stdout.flush()
    return 0


def _default_long_data():
    """gutenberg/test.jsonl.gz of the data folder, or None."""
    from ssa.training.tokenizer import shared_data_dir

    root = shared_data_dir()
    path = None if root is None else root / "gutenberg" / "test.jsonl.gz"
    return path if path is not None and path.is_file() else None


def _check_inputs(args, sections) -> None:
    """Each file the chosen sections read exists (a missing one would fail after earlier sections ran)."""
    if args.data != "val" and not Path(args.data).expanduser().is_file():
        raise FileNotFoundError(f"--data {args.data} does not exist (expected a .txt, .jsonl or .jsonl.gz file, or 'val')")
    needs_long = "extrapolation" in sections or ("retrieval" in sections and "text" in args.haystack)
    if needs_long and args.long_data not in (None, "val") and not Path(args.long_data).expanduser().is_file():
        raise FileNotFoundError(f"--long-data {args.long_data} does not exist (expected a .txt, .jsonl or .jsonl.gz file, or 'val')")
    if "extrapolation" in sections and args.long_data is None and _default_long_data() is None:
        raise FileNotFoundError(
            f"--{'all' if args.all else 'extrapolation'} needs long documents: pass --long-data FILE (or 'val'); "
            "the default, gutenberg/test.jsonl.gz of the data folder ($SSA_DATA_DIR, else ~/.cache/ssa/data), was not found"
        )
    if "commonsense" in sections:
        from ssa.evaluation.multiple_choice import task_path

        for task in (t.strip() for t in args.commonsense.split(",") if t.strip()):
            task_path(task, args.tasks_dir)


def _check_lengths(loaded, args, sections) -> None:
    """Lengths that cannot be scored are refused; lengths past training are allowed with a note."""
    seq_len = args.seq_len or loaded.train_len
    s = args.block_size or loaded.config.block_size
    if "extrapolation" in sections:
        short = [m for m in args.lengths if round(m * loaded.train_len) < 2]
        if short:
            raise ValueError(f"--lengths {short} give fewer than 2 tokens at the training length {loaded.train_len}: "
                             f"a window of L tokens scores L - 1 of them")
    if {"perplexity", "attention"} & set(sections):
        if seq_len > loaded.config.max_position_embeddings:
            print(f"ssa eval: warning: --seq-len {seq_len} exceeds the model's max_position_embeddings "
                  f"({loaded.config.max_position_embeddings}): positions past it were never trained", file=sys.stderr)
        if s > seq_len:
            print(f"ssa eval: warning: --block-size {s} exceeds the row length {seq_len}: every row is one partial "
                  f"block, so sparse equals full attention", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
def _rows(loaded, args):
    from ssa.evaluation.perplexity import make_rows
    from ssa.evaluation.text import held_out_documents, token_stream

    seq_len = args.seq_len or loaded.train_len
    need = None if args.limit is None else (args.limit + 1) * seq_len
    stream = token_stream(held_out_documents(loaded.train_config, args.data, args.text_field), loaded.tokenizer, need)
    return make_rows(stream, seq_len, args.limit), seq_len


def _eval_perplexity(loaded, args, modes, progress):
    from ssa.evaluation.perplexity import budget_sweep, default_block_counts, loaded_byte_lengths
    from ssa.evaluation.results import table

    rows, seq_len = _rows(loaded, args)
    s = args.block_size or loaded.config.block_size
    counts = args.block_counts or sorted(set(default_block_counts(s, seq_len)) | {loaded.config.block_count})
    results = budget_sweep(loaded.model, rows, loaded_byte_lengths(loaded), modes, counts, s,
                           batch_size=args.batch_size, progress=progress)
    full = next((r for r in results if r["mode"] == "full"), None)
    for r in results:
        r["gap_vs_full"] = (r["ppl"] - full["ppl"]) if full and r["mode"] == "sparse" else None
    settings = {"data": args.data, "seq_len": seq_len, "rows": rows.shape[0], "block_size": s,
                "block_counts": counts, "modes": modes}
    text = table(["mode", "n", "RF", "ppl", "bpb", "gap", "tokens"],
                 [[r["mode"], r["block_count"], r["receptive_field"], r["ppl"], r["bpb"], r["gap_vs_full"], r["tokens"]]
                  for r in results])
    return settings, {"results": results}, text


def _eval_attention(loaded, args, modes, progress):
    from ssa.evaluation.attention import attention_report
    from ssa.evaluation.results import table

    rows, seq_len = _rows(loaded, args)
    n = args.block_count or loaded.config.block_count
    s = args.block_size or loaded.config.block_size
    rep = attention_report(loaded.model, rows, modes, n, s, batch_size=max(1, args.batch_size // 2), progress=progress)
    settings = {"data": args.data, "seq_len": seq_len, "rows": rows.shape[0], "block_count": n, "block_size": s,
                "receptive_field": n * s, "modes": modes}
    lines = []
    for mode, summ in rep.items():
        o = summ["overall"]
        lines.append(f"[{mode}] overall: sparsity {o['sparsity']:.4f}  dropped {o['dropped_mass']:.4f}  "
                     f"entropy {o['entropy_bits']:.3f} bits  KL(final layer) {o['kl_final_layer']:.4f} nats  "
                     f"sink block {o['sink_block_mass']:.4f}  sink token {o['sink_token_mass']:.4f}")
        lines.append(table(["layer", "sparsity", "restricted", "dropped", "entropy", "KL", "sink blk", "sink tok"],
                           [[i, L["sparsity"], L["restricted_sparsity"], L["dropped_mass"], L["entropy_bits"], L["kl"],
                             L["sink_block_mass"], L["sink_token_mass"]] for i, L in enumerate(summ["layers"])]))
    if n * s >= seq_len:
        lines.append(f"note: budget {n}x{s} covers seq_len {seq_len}: nothing can be dropped (sparsity 1); "
                     "use --seq-len or --block-count")
    return settings, {"modes": rep}, "\n".join(lines)


def _long_documents(loaded, args, min_tokens, max_tokens):
    from ssa.evaluation.text import document_tokens, read_documents

    path = args.long_data or _default_long_data()  # _check_inputs made sure there is one
    limit = args.limit if args.limit is not None else (2 if loaded.device.type == "cpu" else None)
    if path == "val":
        import torch

        from ssa.evaluation.text import held_out_documents, token_stream

        need = None if limit is None else limit * max_tokens
        stream = token_stream(held_out_documents(loaded.train_config, "val", args.text_field), loaded.tokenizer, need)
        n = stream.numel() // max_tokens if limit is None else min(limit, stream.numel() // max_tokens)
        if n == 0:
            raise ValueError(f"--long-data val: the held-out stream has {stream.numel()} tokens, fewer than --doc-tokens {max_tokens}")
        return list(torch.split(stream[: n * max_tokens], max_tokens)), "val", limit
    docs = document_tokens(read_documents(path, args.text_field), loaded.tokenizer, min_tokens, max_tokens, limit)
    if not docs:
        raise ValueError(f"--long-data {path}: no document has {min_tokens} tokens")
    return docs, str(path), limit


def _eval_extrapolation(loaded, args, modes, progress):
    from ssa.evaluation.perplexity import length_extrapolation
    from ssa.evaluation.results import table

    L_max = int(round(max(args.lengths) * loaded.train_len))
    doc_tokens = args.doc_tokens or 2 * L_max
    docs, path, limit = _long_documents(loaded, args, min_tokens=doc_tokens, max_tokens=doc_tokens)
    results = length_extrapolation(loaded, docs, args.lengths, args.rope, modes, args.stride, args.block_count,
                                   progress=progress)
    settings = {"data": path, "documents": len(docs), "doc_tokens": doc_tokens, "train_len": loaded.train_len,
                "multiples": args.lengths, "rope": args.rope, "modes": modes, "limit": limit,
                "block_count": args.block_count or loaded.config.block_count}
    # llama3 scaling at 1x is no scaling: the JSON repeats the plain rows under rope "llama3" for
    # plotting, the printed table shows them once.
    text = table(["rope", "x", "length", "mode", "ppl", "bpb", "tokens"],
                 [[r["rope"], r["multiple"], r["length"], r["mode"], r["ppl"], r["bpb"], r["tokens"]] for r in results
                  if not (r["rope"] == "llama3" and r["multiple"] <= 1)])
    return settings, {"results": results}, text


def _eval_retrieval(loaded, args, modes, progress):
    from ssa.evaluation.retrieval import RetrievalSpec, default_lengths, run_retrieval, summary_table

    lengths = args.retrieval_lengths or default_lengths(loaded.tokenizer, loaded.train_len)
    spec = RetrievalSpec(lengths=lengths, depths=args.depths, haystacks=args.haystack,
                         samples=args.limit or 4, num_distractors=args.num_distractors, seed=args.seed)
    results = run_retrieval(loaded, spec, modes, args.block_count, progress=progress)
    return spec.to_dict() | {"modes": modes, "block_count": args.block_count or loaded.config.block_count}, \
        {"results": results}, summary_table(results)


def _eval_commonsense(loaded, args, modes, progress):
    from ssa.evaluation.multiple_choice import evaluate_tasks, summary_table

    tasks = [t.strip() for t in args.commonsense.split(",") if t.strip()]
    res = evaluate_tasks(loaded, tasks, modes, num_fewshot=args.num_fewshot, limit=args.limit,
                         block_count=args.block_count, tasks_dir=args.tasks_dir, batch_size=args.batch_size,
                         seed=args.seed, progress=progress)
    settings = {"tasks": tasks, "num_fewshot": args.num_fewshot, "limit": args.limit, "modes": modes,
                "block_count": args.block_count or loaded.config.block_count}
    return settings, {"tasks": res}, summary_table(res)
