"""Multiple-choice evaluation with lm-evaluation-harness metrics.

Items are {query, choices, gold}. Each choice is scored as the continuation
`target_delimiter + choice` (delimiter " ") of the context, where the context is `num_fewshot`
solved examples `query + " " + gold_choice + "\\n\\n"` followed by the item's query. As in the
harness:
  acc       = [argmax_i ll_i == gold]
  acc_norm  = [argmax_i ll_i / len(choice_i) == gold]   (length in characters of the choice text)
  acc_bytes = [argmax_i ll_i / len(choice_i in UTF-8 bytes) == gold]
Ties go to the first choice (numpy argmax). Standard errors are the sample standard deviation over
items / sqrt(n). Few-shot examples are drawn (seeded per item) from the other items of the file.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from ssa.textfiles import iter_jsonl

from .loglikelihood import encode_pair, score_continuations

KNOWN_TASKS = ("hellaswag", "piqa", "arc_easy", "arc_challenge")
TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"


def task_path(task: str, tasks_dir=None) -> Path:
    """A known task name (looked up in tasks_dir or the data folder's eval/) or a .jsonl(.gz) path."""
    p = Path(task)
    if p.suffix in (".jsonl", ".gz") or p.is_file():
        if not p.is_file():
            raise FileNotFoundError(f"--commonsense task file {p} does not exist")
        return p
    if task not in KNOWN_TASKS:
        raise ValueError(f"--commonsense tasks must be among {KNOWN_TASKS} or .jsonl(.gz) files, got {task!r}")
    if tasks_dir is None:
        from ssa.training.tokenizer import require_data_dir

        tasks_dir = require_data_dir(f"--commonsense task {task!r}", " or pass --tasks-dir DIR") / "eval"
    for name in (f"{task}.jsonl", f"{task}.jsonl.gz"):
        if (Path(tasks_dir) / name).is_file():
            return Path(tasks_dir) / name
    raise FileNotFoundError(f"task {task!r}: neither {task}.jsonl nor {task}.jsonl.gz in {tasks_dir}")


def load_items(path: Path) -> list[dict]:
    items = []
    for lineno, rec in iter_jsonl(Path(path), label="task file"):
        ok = (isinstance(rec.get("query"), str) and isinstance(rec.get("choices"), list)
              and len(rec["choices"]) >= 2 and all(isinstance(c, str) for c in rec["choices"])
              and isinstance(rec.get("gold"), int) and 0 <= rec["gold"] < len(rec["choices"]))
        if not ok:
            raise ValueError(f"task file {path}:{lineno} must be {{query: str, choices: [str, ...], gold: int index}}")
        items.append(rec)
    if not items:
        raise ValueError(f"{path} holds no items")
    return items


def fewshot_context(items: list[dict], index: int, num_fewshot: int, seed: int = 1234) -> str:
    """Solved examples drawn from the other items (seeded by item index), then the item's query."""
    if num_fewshot == 0:
        return items[index]["query"]
    if num_fewshot >= len(items):
        raise ValueError(f"--num-fewshot {num_fewshot} needs more than {len(items)} items")
    rng = random.Random(seed * 1_000_003 + index)
    pool = [j for j in rng.sample(range(len(items)), min(len(items), num_fewshot + 1)) if j != index][:num_fewshot]
    shots = "".join(items[j]["query"] + TARGET_DELIMITER + items[j]["choices"][items[j]["gold"]] + FEWSHOT_DELIMITER
                    for j in pool)
    return shots + items[index]["query"]


def _argmax(xs) -> int:
    best = 0
    for i, x in enumerate(xs):
        if x > xs[best]:
            best = i
    return best


def item_metrics(lls: list[float], choices: list[str], gold: int) -> dict:
    return {
        "acc": float(_argmax(lls) == gold),
        "acc_norm": float(_argmax([ll / max(len(c), 1) for ll, c in zip(lls, choices)]) == gold),
        "acc_bytes": float(_argmax([ll / max(len(c.encode("utf-8")), 1) for ll, c in zip(lls, choices)]) == gold),
    }


def _mean_stderr(xs: list[float]) -> tuple[float, float]:
    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, 0.0
    var = sum((x - m) ** 2 for x in xs) / (n - 1)
    return m, math.sqrt(var / n)


def evaluate_items(model, tokenizer, items: list[dict], max_length: int, mode=None, block_count=None,
                   num_fewshot: int = 0, limit: int | None = None, batch_size: int = 8, seed: int = 1234,
                   progress: bool = True, desc: str = "multiple choice") -> dict:
    """acc / acc_norm / acc_bytes (+ stderr) over the first `limit` items."""
    n = len(items) if limit is None else min(limit, len(items))
    pairs, owners = [], []
    for i in range(n):
        ctx = fewshot_context(items, i, num_fewshot, seed)
        for c in items[i]["choices"]:
            pairs.append(encode_pair(tokenizer, ctx, TARGET_DELIMITER + c))
            owners.append(i)
    scored = score_continuations(model, pairs, max_length, mode, block_count, batch_size=batch_size,
                                 progress=progress, desc=desc)
    per_item: dict[int, list[float]] = {}
    for i, (ll, _) in zip(owners, scored):
        per_item.setdefault(i, []).append(ll)
    metrics = {"acc": [], "acc_norm": [], "acc_bytes": []}
    for i in range(n):
        m = item_metrics(per_item[i], items[i]["choices"], items[i]["gold"])
        for k in metrics:
            metrics[k].append(m[k])
    out = {"n": n}
    for k, xs in metrics.items():
        out[k], out[k + "_stderr"] = _mean_stderr(xs)
    return out


def evaluate_tasks(loaded, tasks, modes, num_fewshot=0, limit=None, block_count=None, tasks_dir=None,
                   batch_size=8, seed=1234, progress=True) -> dict:
    """{task: {mode: metrics}} for a loaded checkpoint."""
    res = {}
    for task in tasks:
        path = task_path(task, tasks_dir)
        items = load_items(path)
        name = task if task in KNOWN_TASKS else path.name.split(".")[0]
        res[name] = {}
        for mode in modes:
            res[name][mode] = evaluate_items(
                loaded.model, loaded.tokenizer, items, loaded.train_len, mode,
                block_count if mode == "sparse" else None, num_fewshot, limit, batch_size, seed, progress,
                desc=f"{name} {mode}")
    return res


def summary_table(res: dict) -> str:
    from .results import table

    rows = []
    for task, by_mode in res.items():
        for mode, m in by_mode.items():
            rows.append([task, mode, m["n"], m["acc"], m["acc_norm"], m["acc_norm_stderr"], m["acc_bytes"]])
    modes = sorted({mode for by_mode in res.values() for mode in by_mode})
    for mode in modes:
        vals = [by_mode[mode]["acc_norm"] for by_mode in res.values() if mode in by_mode]
        if len(vals) > 1:
            rows.append(["average", mode, None, None, sum(vals) / len(vals), None, None])
    return table(["task", "mode", "n", "acc", "acc_norm", "stderr", "acc_bytes"], rows)
