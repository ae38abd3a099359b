"""Which cue does each `ssa demo` model follow? Trains FullAttn and SSA as the demo does, then reads
them in full mode on rows whose two cues disagree.

Conflict rows are held-out demo rows with the decoy symbol d also written `--extra` times into every
earlier block (never over a pair), so that counting over the whole row now finds d while the pairs
still name z. A model that reads the pairs answers z; one that counts answers d. Also prints the
ordinary held-out scores (full and n = 2) for reference.
Usage: python benchmarks/demo_cues.py [--seeds 0-2] [--steps 600] [--extra 4] [--jobs 2] [--json F]
"""

import argparse
import json
import multiprocessing

import torch

from ssa.training.topic_task import TopicRun, TopicTask, answer_scores, held_out_rows, train


def conflict_rows(task: TopicTask, tokens: torch.Tensor, labels: torch.Tensor, extra: int, seed: int = 5):
    """The rows with d added `extra` times to every block before the decoy blocks, and d per row."""
    x = tokens.clone()
    z = labels[:, -1]
    tail = x[:, task.spread_len:]
    counts = torch.stack([(tail == v).sum(-1) for v in range(task.topics)], -1)
    d = counts.scatter(1, z[:, None], -1).argmax(-1)  # the decoy: the most frequent other topic there
    g = torch.Generator().manual_seed(seed)
    s = task.block_size
    for start in range(0, task.spread_len, s):
        block = x[:, start:start + s]
        # Neither a marker nor the topic symbol right before one is overwritten.
        pair = (block >= task.symbols) | torch.roll(block >= task.symbols, -1, dims=1)
        order = (torch.rand(block.shape, generator=g) + 2.0 * pair).argsort(-1)[:, :extra]
        block.scatter_(1, order, d[:, None].expand(-1, extra))
    return x, d


def one(args):
    task, run, extra = args
    model, seconds = train(task, run)
    tokens, labels = [t.cpu() for t in held_out_rows(task, run)]
    x, d = conflict_rows(task, tokens, labels, extra)
    with torch.no_grad():
        pred = model(x.to(run.device), attention_mode="full").logits[:, task.answer_from:-1].argmax(-1).cpu()
    z = labels[:, -1]
    return {"method": run.method, "seed": run.seed, "train_seconds": seconds,
            "conflict_follows_pairs": float((pred == z[:, None]).float().mean()),
            "conflict_follows_count": float((pred == d[:, None]).float().mean()),
            "full": answer_scores(model, tokens.to(run.device), labels.to(run.device), "full", None),
            "n=2": answer_scores(model, tokens.to(run.device), labels.to(run.device), "sparse", 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0-2", help="FIRST-LAST")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--extra", type=int, default=4)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    first, last = map(int, a.seeds.split("-"))
    task = TopicTask()
    jobs = [(task, TopicRun(method=m, seed=s, steps=a.steps), a.extra) for s in range(first, last + 1)
            for m in ("full", "ssa")]
    with multiprocessing.get_context("spawn").Pool(a.jobs) as pool:
        results = pool.map(one, jobs)
    for r in results:
        print(f"{r['method']:>4} seed {r['seed']}: conflict rows (full mode) follow the pairs "
              f"{r['conflict_follows_pairs']:.1%}, the count {r['conflict_follows_count']:.1%}; ordinary rows "
              f"full {r['full']['accuracy']:.1%}, n=2 {r['n=2']['accuracy']:.1%} ({r['train_seconds']:.0f} s)")
    if a.json:
        json.dump({"task": task.__dict__, "extra": a.extra, "steps": a.steps, "results": results},
                  open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
