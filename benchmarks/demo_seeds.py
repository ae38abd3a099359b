"""The `ssa demo` outcome over many seeds and task variants, many models at once (one process each).

For every task variant (TopicTask fields as JSON objects) and seed, trains FullAttn and SSA with the
demo's settings and prints one line per model: full-mode accuracy, then sparse at n = 2, 3, 4
(accuracy / answer cross-entropy), then the share of answers on conflict rows that follow the pairs
and the count. Writes all results to OUT.jsonl.
Usage: python benchmarks/demo_seeds.py OUT.jsonl --seeds 0-11 [--steps 600] [--jobs 16]
       [--device cuda] [--variants '[{}, {"repeats": 16}]']
"""

import argparse
import json
import multiprocessing

from ssa.training.topic_task import TopicRun, TopicTask, train_and_score


def one(args):
    task, run = args
    result = train_and_score(task, run)
    result["task"] = task.__dict__
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--seeds", default="0-7", help="FIRST-LAST")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--variants", default="[{}]", help="JSON list of TopicTask field overrides")
    a = p.parse_args()
    first, last = map(int, a.seeds.split("-"))
    jobs = []
    for fields in json.loads(a.variants):
        task = TopicTask(**fields)
        task.validate()
        jobs += [(task, TopicRun(method=m, seed=s, steps=a.steps, device=a.device))
                 for s in range(first, last + 1) for m in ("full", "ssa")]
    with multiprocessing.get_context("spawn").Pool(a.jobs) as pool, open(a.out, "a") as f:
        for r in pool.imap_unordered(one, jobs):
            f.write(json.dumps(r) + "\n")
            f.flush()
            cells = " ".join(f"{k} {v['accuracy']:.3f}/{v['ce']:.3f}" for k, v in r["scores"].items())
            cells += f" | cues: pairs {r['cues']['pairs']:.3f} count {r['cues']['count']:.3f}"
            print(f"{r['method']:>4} seed {r['seed']:>2} {json.dumps(r['task'])}: {cells} ({r['train_seconds']:.0f} s)",
                  flush=True)


if __name__ == "__main__":
    main()
