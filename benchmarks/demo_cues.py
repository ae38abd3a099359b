"""Which cue does each `ssa demo` model follow, over seeds? Trains FullAttn and SSA as the demo does
and prints, per model, the share of answers on conflict rows (`topic_task.conflict_rows`: the decoy
also written into every earlier block, so counting finds it while the pairs still name the topic)
that follow the pairs and that follow the count, in full mode, with the ordinary scores beside.
Usage: python benchmarks/demo_cues.py [--seeds 0-2] [--steps 600] [--jobs 2] [--json F]
"""

import argparse
import json
import multiprocessing

from ssa.training.topic_task import TopicRun, TopicTask, train_and_score


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0-2", help="FIRST-LAST")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    first, last = map(int, a.seeds.split("-"))
    task = TopicTask()
    runs = [TopicRun(method=m, seed=s, steps=a.steps, eval_block_counts=(2,)) for s in range(first, last + 1)
            for m in ("full", "ssa")]
    with multiprocessing.get_context("spawn").Pool(a.jobs) as pool:
        results = pool.starmap(train_and_score, [(task, r) for r in runs])
    for r in results:
        print(f"{r['method']:>4} seed {r['seed']}: conflict rows (full mode) follow the pairs {r['cues']['pairs']:.1%}, "
              f"the count {r['cues']['count']:.1%}; ordinary rows full {r['scores']['full']['accuracy']:.1%}, "
              f"n=2 {r['scores']['n=2']['accuracy']:.1%} ({r['train_seconds']:.0f} s)")
    if a.json:
        json.dump({"task": task.__dict__, "steps": a.steps, "results": results}, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
