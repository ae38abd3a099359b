"""`ssa demo`: FullAttn and SSA trained on the embedded topic task on CPU, then read in full and in
sparse mode side by side, with a one-line reading computed from the numbers.

The task (`ssa.training.topic_task`) can be solved by attending to everything or by reading local
pairs; only the second survives a sparse window. A FullAttn model is never asked to work sparse,
while SSA trains its sparse stream on half of the steps, so the question the demo answers is the
paper's: which model keeps its quality when only a few blocks are attended?
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ssa.errors import CommandError
from ssa.model.config import METHOD_NAMES
DEMO_METHODS = ("full", "ssa", "moba")  # NSA has no full mode to compare against


def add_arguments(parser) -> None:
    parser.add_argument("--methods", default="full,ssa", help=f"comma-separated, from {', '.join(DEMO_METHODS)}")
    parser.add_argument("--steps", type=int, default=600, help="training steps per model (rows of 128 tokens, batch 32)")
    parser.add_argument("--seed", type=int, default=0, help="model and data seed, the same for every method")
    parser.add_argument("--block-count", type=int, default=2,
                        help="blocks per query (of 16) in SSA's sparse stream and in the sparse reading")
    parser.add_argument("--eval-block-counts", default="2,3,4", help="sparse budgets to score (comma-separated)")
    parser.add_argument("--eval-rows", type=int, default=512, help="held-out rows scored per mode")
    parser.add_argument("--jobs", type=int, default=None,
                        help="models trained at once, one CPU thread each (default: one per method, at most "
                             "the CPU count)")
    parser.add_argument("--json", default=None, help="also write the results to this file")


def _check(args):
    from ssa.training.topic_task import TopicRun, TopicTask

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in DEMO_METHODS]
    if bad or not methods or len(set(methods)) != len(methods):
        raise CommandError(f"--methods must be distinct names from {', '.join(DEMO_METHODS)}, got {args.methods!r}")
    task = TopicTask()
    blocks = task.seq_len // task.block_size
    try:
        budgets = tuple(int(n) for n in args.eval_block_counts.split(","))
    except ValueError:
        raise CommandError(f"--eval-block-counts must be comma-separated integers, got {args.eval_block_counts!r}")
    for name, values in (("--block-count", (args.block_count,)), ("--eval-block-counts", budgets)):
        if any(not 1 <= n <= blocks for n in values):
            raise CommandError(f"{name} must be in [1, {blocks}] (blocks per row), got {values}")
    if args.seed < 0:
        raise CommandError(f"--seed must be >= 0, got {args.seed}")
    for name in ("steps", "eval_rows"):
        if getattr(args, name) < 1:
            raise CommandError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.jobs is not None and args.jobs < 1:
        raise CommandError(f"--jobs must be >= 1, got {args.jobs}")
    if args.block_count not in budgets:
        budgets = (args.block_count,) + budgets
    runs = [TopicRun(method=m, seed=args.seed, steps=args.steps, block_count=args.block_count,
                     eval_block_counts=budgets, eval_rows=args.eval_rows) for m in methods]
    return task, runs


def run_all(task, runs, jobs: int) -> list[dict]:
    """Every run's `train_and_score`, `jobs` at a time in worker processes (one thread each)."""
    from ssa.training.topic_task import train_and_score

    if jobs <= 1:
        return [train_and_score(task, r) for r in runs]
    import multiprocessing

    # spawn: a fresh interpreter per worker, so no thread pool state is inherited from this one.
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        return pool.starmap(train_and_score, [(task, r) for r in runs])


def reading(results: list[dict], n: int) -> str:
    """One line on whether SSA kept its answers at budget n while FullAttn lost them."""
    by = {r["method"]: r["scores"] for r in results}
    if "full" not in by or "ssa" not in by:
        return "reading: needs both full and ssa in --methods"
    key = f"n={n}"

    def kept(m):
        return by[m][key]["accuracy"] / max(by[m]["full"]["accuracy"], 1e-9)

    def error(m):
        return 1.0 - by[m][key]["accuracy"]

    if min(by[m]["full"]["accuracy"] for m in ("full", "ssa")) < 0.9:
        return ("reading: a model has not learned the task in full mode (under 90% right), so the sparse "
                "numbers say little; train longer (--steps)")
    if kept("ssa") >= 0.98 and kept("full") < 0.97 and error("full") >= 3 * max(error("ssa"), 0.005):
        return (f"reading: with {n} of 16 blocks per query, SSA keeps its answers ({kept('ssa'):.1%} of its "
                f"full-mode accuracy) while FullAttn loses some: it gets {error('full'):.1%} of them wrong "
                f"(SSA {error('ssa'):.1%}) and keeps {kept('full'):.1%}.")
    return (f"reading: with {n} of 16 blocks per query, no clear difference (SSA keeps {kept('ssa'):.1%}, "
            f"FullAttn {kept('full'):.1%} of its full-mode accuracy)")


def table(results: list[dict]) -> str:
    modes = list(results[0]["scores"])
    head = f"{'method':<10}" + "".join(f"{('full' if m == 'full' else 'sparse ' + m):>22}" for m in modes)
    lines = [head + f"{'train s':>10}"]
    for r in results:
        cells = "".join(f"{100 * s['accuracy']:>13.1f}% ({s['ce']:.3f})" for s in r["scores"].values())
        lines.append(f"{METHOD_NAMES[r['method']]:<10}{cells}{r['train_seconds']:>10.0f}")
    return "\n".join(lines)


def run(args) -> int:
    task, runs = _check(args)
    jobs = args.jobs or min(len(runs), os.cpu_count() or 1)
    blocks = task.seq_len // task.block_size
    print(f"topic task: name the row's topic at each of the last {task.answer_blocks} blocks of a "
          f"{task.seq_len}-token row (blocks of {task.block_size}; chance {1 / task.topics:.1%}).\n"
          f"Training {', '.join(METHOD_NAMES[r.method] for r in runs)} for {args.steps} steps each "
          f"(seed {args.seed}, {jobs} at a time); SSA's sparse stream sees {args.block_count} of {blocks} "
          f"blocks per query.", flush=True)
    results = run_all(task, runs, jobs)
    print("\nanswer accuracy (cross-entropy of the answer, nats), full attention vs sparse with n blocks:")
    print(table(results))
    print("\nwhich cue each model follows, in full mode, on rows where the count names the decoy and the "
          "pairs the topic:")
    for r in results:
        print(f"{METHOD_NAMES[r['method']]:<10}pairs {r['cues']['pairs']:>6.1%}   count {r['cues']['count']:>6.1%}")
    print(reading(results, args.block_count))
    if args.json:
        from dataclasses import asdict

        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"task": asdict(task), "runs": [asdict(r) for r in runs], "results": results}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, path)  # atomic: a reader never sees half a file
    return 0
