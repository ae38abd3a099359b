"""`ssa compare`: train several methods on the same data, evaluate them alike, report the claims.

    ssa compare --preset tiny --methods full,ssa --seeds 0,1 --out runs/cmp
    ssa compare --preset study --set data.source=DIR/train.jsonl.gz --time-budget 540 --out out/a
    ssa compare --merge out/a out/b --out docs/study            # one report from several invocations

Every run gets the same data, token budget and seed list; the seed changes both the
initialisation and the data order. On CUDA the runs train side by side on the one GPU (one process
each) when they fit, else group by group; on CPU one after another. Each run is then evaluated
with the same `ssa eval` settings, and OUT/results/<run>.json plus OUT/report/ are written (see
`ssa.evaluation.compare`). With `--time-budget`, a probe of a few training steps per method
measures the throughput and the step count is chosen so that training and evaluation end in time;
nothing from an earlier invocation is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ssa.errors import CommandError

from .evaluate import _floats, _ints, _words

METHODS = ("full", "moba", "nsa", "ssa")
SECTIONS = ("perplexity", "test", "attention", "extrapolation", "retrieval", "copy")
DEFAULT_SECTIONS = ("perplexity", "test", "attention", "extrapolation", "retrieval")
# Probe: untimed warm-up steps first (they pay for the CUDA context, Triton compilation and
# autotuning; SSA's alternate full and sparse so both modes' kernels are built), then timed steps.
PROBE_WARMUP, PROBE_TIMED = 4, 5
SAFETY_FRACTION = 0.05  # of the budget, for what the probe does not see (jitter, the final validation and save)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="preset from configs/ (tiny, study, 300m, 1b); default tiny")
    p.add_argument("--config", metavar="FILE", help="a JSON config {model, train, data} instead of a preset")
    p.add_argument("--methods", type=_words("--methods", METHODS), default=None,
                   help="comma list of full, moba, nsa, ssa (default: all four)")
    p.add_argument("--seeds", nargs="+", default=["0"], metavar="SEEDS",
                   help="comma list for every method (0,1), or per method: full=0,1 ssa=0,1 moba=0")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides for every run, as in `ssa train` (e.g. data.source=FILE)")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps per run (default: the config's; with --time-budget: the probe sizes them, "
                        "and --steps N instead fails early unless N steps fit)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="whole command in this many seconds: a throughput probe sizes the steps")
    p.add_argument("--eval-reserve", type=float, default=None, metavar="SECONDS",
                   help="with --time-budget: seconds kept for evaluation and the report (default 30%% of it)")
    p.add_argument("--parallel", default="auto",
                   help="runs trained at once: auto (CUDA: all that fit in memory; CPU: 1) or a number")
    p.add_argument("--out", default=None, help="output folder (default runs/compare-<preset>)")
    p.add_argument("--runs-dir", default=None,
                   help="where the training run folders with checkpoints go (default OUT/runs)")
    p.add_argument("--merge", nargs="+", metavar="DIR", default=None,
                   help="only build one report from these compare output folders into --out")
    p.add_argument("--no-plots", action="store_true", help="no PNG figures")
    g = p.add_argument_group("evaluation (the same for every run)")
    g.add_argument("--sections", type=_words("--sections", SECTIONS), default=None,
                   help=f"comma list of {', '.join(SECTIONS)} (default {','.join(DEFAULT_SECTIONS)})")
    g.add_argument("--block-counts", type=_ints("--block-counts"), default=[4, 8, 16, 32, 64],
                   help="sparse budgets of the perplexity sweep (default 4,8,16,32,64)")
    g.add_argument("--eval-rows", type=int, default=None, help="rows of the training length for perplexity (default 64)")
    g.add_argument("--test-data", default=None, help="test split file for the `test` section (.jsonl.gz, .jsonl or .txt)")
    g.add_argument("--attention-rows", type=int, default=8, help="rows for attention statistics (default 8)")
    g.add_argument("--long-data", default="val",
                   help="long documents for extrapolation: a file, or val (the run's held-out stream); default val")
    g.add_argument("--lengths", type=_floats("--lengths", lo=0.01), default=[1, 2, 4],
                   help="extrapolation lengths as multiples of the training length (default 1,2,4)")
    g.add_argument("--extrapolation-docs", type=int, default=4, help="documents for extrapolation (default 4)")
    g.add_argument("--retrieval-multiples", type=_floats("--retrieval-multiples", lo=0.01), default=[0.5, 1, 2, 4],
                   help="passkey context lengths as multiples of the training length (default 0.5,1,2,4)")
    g.add_argument("--depths", default="0,0.5,1", help="passkey needle depths (default 0,0.5,1)")
    g.add_argument("--retrieval-samples", type=int, default=2, help="passkey samples per cell (default 2)")
    g.add_argument("--eval-batch-size", type=int, default=8)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


# ----------------------------------------------------------------------------------------------
# Plan
# ----------------------------------------------------------------------------------------------
def parse_seeds(items: list[str], methods: list[str]) -> dict[str, list[int]]:
    """`["0,1"]` -> every method gets 0,1; `["full=0,1", "ssa=0"]` -> per method (others: none)."""
    def ints(text, what):
        try:
            vals = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            vals = []
        if not vals or any(v < 0 for v in vals) or len(set(vals)) != len(vals):
            raise ValueError(f"--seeds {what}: expected distinct integers >= 0 like 0,1, got {text!r}")
        return vals

    per = [x for x in items if "=" in x]
    if per and len(per) != len(items):
        raise ValueError("--seeds: give either one list for all methods (0,1) or method=list items, not both")
    if not per:
        if len(items) != 1:
            raise ValueError(f"--seeds: one comma list for all methods, got {items}")
        seeds = ints(items[0], "")
        return {m: list(seeds) for m in methods}
    out: dict[str, list[int]] = {}
    for item in per:
        m, text = item.split("=", 1)
        if m not in methods:
            raise ValueError(f"--seeds {item!r}: method {m!r} is not among --methods {','.join(methods)}")
        out[m] = ints(text, m)
    return {m: out[m] for m in methods if m in out}


def base_config(args) -> tuple[dict, str | None]:
    from ssa.training.config import load_config_file, load_preset

    if args.preset and args.config:
        raise ValueError("give either --preset or --config, not both")
    if args.config:
        return load_config_file(args.config), None
    name = args.preset or "tiny"
    return load_preset(name), name


def run_configs(base: dict, preset, seeds: dict, overrides: list[str], steps: int | None) -> dict[str, dict]:
    """{run name: resolved config}; only method and seed differ between runs."""
    from ssa.evaluation.compare import run_name
    from ssa.training.config import resolve_config

    out = {}
    for method, ss in seeds.items():
        for seed in ss:
            extra = list(overrides) + [f"train.seed={seed}"]
            if steps is not None:
                extra.append(f"train.max_steps={steps}")
            cfg = resolve_config(base, method=method, overrides=extra, preset=preset)
            # One validation and one checkpoint, at the end: the evaluation reads that checkpoint.
            t = cfg["train"]
            t["eval_every"] = t["save_every"] = t["max_steps"]
            t["keep_checkpoints"] = 1
            out[run_name(method, seed)] = cfg
    return out


def eval_commands(args, sections: list[str], train_len: int, run_dir: str) -> list[list[str]]:
    """`ssa eval` argument lists, one per section, identical for every run but the run folder."""
    counts = ",".join(str(n) for n in args.block_counts)
    common = ["--batch-size", str(args.eval_batch_size)] + (["--no-progress"] if args.no_progress else [])
    cmds = []
    for s in sections:
        if s == "perplexity":
            cmds.append(["--perplexity", "--block-counts", counts, "--limit", str(args.eval_rows)])
        elif s == "test":
            cmds.append(["--perplexity", "--data", str(args.test_data), "--tag", "test", "--block-counts", counts,
                         "--limit", str(args.eval_rows)])
        elif s == "attention":
            cmds.append(["--attention", "--limit", str(args.attention_rows)])
        elif s == "extrapolation":
            cmds.append(["--extrapolation", "--long-data", str(args.long_data),
                         "--lengths", ",".join(f"{x:g}" for x in args.lengths),
                         "--limit", str(args.extrapolation_docs)])
        elif s == "retrieval":
            lengths = ",".join(str(max(1, round(m * train_len))) for m in args.retrieval_multiples)
            cmds.append(["--retrieval", "--retrieval-lengths", lengths, "--depths", args.depths,
                         "--limit", str(args.retrieval_samples)])
        else:  # copy: not an `ssa eval` section, run by the worker itself
            cmds.append(["copy", "--limit", str(args.eval_rows)])
    return [[run_dir] + c + common for c in cmds]


def plan_steps(budget_s: float, elapsed_s: float, reserve_s: float, groups: list[list[dict]],
               safety_s: float = 0.0) -> dict:
    """Training steps that fit, with the arithmetic behind them. Groups train one after another;
    inside a group the runs share the GPU, so a group takes its slowest run's start-up
    (`overhead_s`: process, CUDA context, compilation) plus steps x its slowest steady step time
    (`step_s`, measured while the group ran together)."""
    overhead = sum(max(p["overhead_s"] for p in g) for g in groups)
    per_step = sum(max(p["step_s"] for p in g) for g in groups)
    left = budget_s - elapsed_s - reserve_s - safety_s - overhead
    steps = int(left // per_step) if per_step > 0 and left > 0 else 0
    return {"steps": steps, "train_s_available": left, "startup_s": overhead, "step_s": per_step,
            "safety_s": safety_s, "train_s_planned": overhead + steps * per_step}


def group_runs(names: list[str], parallel: int) -> list[list[str]]:
    return [names[i:i + parallel] for i in range(0, len(names), parallel)]


# ----------------------------------------------------------------------------------------------
# Workers: one job = train, probe or evaluate one run (in this process or a child)
# ----------------------------------------------------------------------------------------------
def _peak_memory() -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() and torch.cuda.is_initialized() else None


def job_train(job: dict) -> dict:
    from ssa.evaluation.report import read_metrics
    from ssa.training.trainer import train

    t0 = time.time()
    summary = train(job["config"], job["run_dir"], progress=job.get("progress", False))
    metrics = read_metrics(Path(job["run_dir"]))
    steps = [m for m in metrics if "elapsed_s" in m]
    out = {"step": summary["step"], "tokens": (summary.get("last") or {}).get("tokens"), "wall_s": time.time() - t0,
           "n_parameters": summary.get("n_parameters"), "last": summary.get("last"), "val": summary.get("val"),
           "peak_memory_bytes": _peak_memory()}
    if len(steps) >= 2:
        a, b = steps[0], steps[-1]  # the first logged step carries start-up and compilation
        out["tokens_per_s"] = (b["tokens"] - a["tokens"]) / max(b["elapsed_s"] - a["elapsed_s"], 1e-9)
    out["metrics"] = metrics
    return out


def probe_steps(step, *, warmup: int, timed: int, sync=None, clock=time.perf_counter) -> dict:
    """Time `timed` calls of `step()` after `warmup` untimed ones.

    `sync` (a `GroupSync`) lines up the probes of one concurrent group: nobody starts timing before
    every run is warm, and a run done early keeps stepping until every run has been timed, so all
    timed steps share the GPU as the real training will. The step time is the median of the timed
    steps: one stray slow step (a late recompilation, a sibling's start) does not size the run."""
    t0 = clock()
    warm_records = [step() for _ in range(warmup)]
    warm_end = clock()
    if sync is not None:
        sync.wait("warm")
    times = []
    for _ in range(timed):
        t = clock()
        step()
        times.append(clock() - t)
    extra = 0
    if sync is not None:
        sync.mark("timed")
        while not sync.arrived("timed"):
            step()
            extra += 1
    return {"warmup_steps": warmup, "warmup_s": warm_end - t0, "timed_steps": timed, "steady_s": sum(times),
            "step_s": statistics.median(times), "step_s_max": max(times), "extra_steps": extra,
            "warm_end": warm_end, "warm_records": warm_records}


class GroupSync:
    """A barrier between the probe processes of one group, through marker files in a shared folder.
    Gives up at `give_up` (a time.time()) so that a crashed sibling cannot hang the others."""

    def __init__(self, folder, name: str, size: int, give_up: float):
        self.folder, self.name, self.size, self.give_up = Path(folder), name, size, give_up
        self.folder.mkdir(parents=True, exist_ok=True)

    def mark(self, stage: str) -> None:
        (self.folder / f"{stage}.{self.name}").touch()

    def arrived(self, stage: str) -> bool:
        return len(list(self.folder.glob(f"{stage}.*"))) >= self.size or time.time() > self.give_up

    def wait(self, stage: str) -> None:
        self.mark(stage)
        while not self.arrived(stage):
            time.sleep(0.02)


def job_probe(job: dict) -> dict:
    """Warm up, then time steady training steps of one run (no validation, no checkpoint).
    SSA's warm-up steps alternate full and sparse mode, so each mode has run (and, with compiled
    blocks, compiled and recompiled for dynamic shapes) twice before timing."""
    import torch

    from ssa.training import distributed as dist
    from ssa.training.config import TrainSpec
    from ssa.training.trainer import Trainer

    forced = ("full", "sparse") * (PROBE_WARMUP // 2)

    class WarmupTrainer(Trainer):
        def mode_for(self, micro_batch: int):
            mode = super().mode_for(micro_batch)
            return mode if mode is None or self.step >= len(forced) else forced[self.step]

    started = job.get("spawned_at") or time.time()
    cfg = job["config"]
    spec = TrainSpec(**cfg["train"])
    info = dist.env_info()
    device = dist.pick_device(spec.device, info)
    if device.type == "cpu":
        torch.set_num_threads(spec.num_threads or max(1, os.cpu_count() or 1))
    trainer = WarmupTrainer(cfg, job["run_dir"], info=info, device=device, progress=False).build()
    trainer.prepare_run_dir()
    sync = None
    if job.get("group_size", 1) > 1:
        give_up = job.get("deadline") or time.time() + 600
        sync = GroupSync(job["sync_dir"], job["name"], job["group_size"], give_up)
    res = probe_steps(trainer.train_step, warmup=PROBE_WARMUP, timed=PROBE_TIMED, sync=sync, clock=time.time)
    modes = sorted({m for r in res.pop("warm_records") for m in r["attention_modes"]})
    # What a real run pays before its steady steps: start to warm, less the warm-up steps' steady cost.
    overhead = max(0.0, res.pop("warm_end") - started - res["warmup_steps"] * res["step_s"])
    return {**res, "warmup_modes": modes, "overhead_s": overhead, "wall_s": time.time() - started,
            "peak_memory_bytes": _peak_memory()}


def job_eval(job: dict) -> dict:
    """Run every `ssa eval` section of the job; the result file is updated after each one."""
    from ssa.evaluation.results import read_results

    from . import evaluate

    parser = argparse.ArgumentParser(prog="ssa eval")
    evaluate.add_arguments(parser)
    done, failed = [], {}
    deadline = job.get("deadline")
    for argv in job["commands"]:
        if deadline is not None and time.time() > deadline:
            failed[" ".join(argv[1:3])] = "skipped: time budget spent"
            continue
        try:
            if argv[1] == "copy":
                _copy_section(argv)
            else:
                evaluate.run(parser.parse_args(argv))
            done.append(argv)
        except Exception as err:  # one failing section must not lose the others
            failed[" ".join(argv[1:3])] = f"{type(err).__name__}: {err}"
            print(f"ssa compare: evaluation {argv} failed: {err}", file=sys.stderr)
        _update_result(job["result"], {"eval": read_results(Path(job["run_dir"])), "eval_failed": failed})
    return {"eval_failed": failed}


def _copy_section(argv: list[str]) -> None:
    """Copy accuracy on held-out copy documents, full and sparse at the trained budget."""
    from ssa.evaluation import loading
    from ssa.evaluation.copy_task import copy_accuracy, copy_rows
    from ssa.evaluation.results import write_result
    from ssa.evaluation.text import held_out_documents

    limit = int(argv[argv.index("--limit") + 1])
    loaded = loading.load(argv[0], device="auto")
    docs = list(held_out_documents(loaded.train_config))
    rows, targets = copy_rows(docs, loaded.tokenizer, loaded.train_len, limit)
    n = loaded.config.block_count
    res = {m: copy_accuracy(loaded.model, rows, targets, m, n) for m in loaded.modes}
    write_result(loaded.eval_dir / "copy.json", "copy", loaded.describe(),
                 {"rows": rows.shape[0], "block_count": n, "modes": list(loaded.modes)}, {"modes": res})


def _update_result(path, fields: dict) -> None:
    from ssa.evaluation.compare import read_json, write_json

    rec = read_json(Path(path), "run result") if Path(path).is_file() else {}
    rec.update(fields)
    write_json(Path(path), rec)


def run_job(job: dict) -> dict:
    run = {"train": job_train, "probe": job_probe, "eval": job_eval}[job["kind"]]
    out = run(job)
    if job.get("report"):
        from ssa.evaluation.compare import write_json

        write_json(Path(job["report"]), out)
    return out


def _spawn(job: dict, tmp: Path) -> subprocess.Popen:
    """A child process for one job (same GPU: CUDA_VISIBLE_DEVICES is inherited)."""
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / f"{job['kind']}-{job['name']}.json"
    job = {**job, "spawned_at": time.time()}  # the probe counts the child's start-up as overhead
    path.write_text(json.dumps(job), encoding="utf-8")
    log = open(tmp / f"{job['kind']}-{job['name']}.log", "w")
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.Popen([sys.executable, "-m", "ssa.commands.compare", "worker", str(path)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)


def run_jobs(jobs: list[dict], parallel: int, tmp: Path, deadline: float | None) -> list[dict | None]:
    """Run jobs (parallel > 1: children, `parallel` at once); None for a job that failed or was
    stopped at the deadline. Reports come back through job["report"] files."""
    results: list[dict | None] = [None] * len(jobs)
    if parallel <= 1:
        for i, job in enumerate(jobs):
            if deadline is not None and time.time() > deadline:
                print(f"ssa compare: {job['kind']} {job['name']} skipped: time budget spent", file=sys.stderr)
                continue
            results[i] = run_job(job)
        return results
    from ssa.evaluation.compare import read_json

    for start in range(0, len(jobs), parallel):
        batch = list(enumerate(jobs))[start:start + parallel]
        procs = [(i, job, _spawn(job, tmp)) for i, job in batch]
        for i, job, proc in procs:
            wait = None if deadline is None else max(1.0, deadline - time.time())
            try:
                rc = proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                proc.kill()  # this job's own child, by its handle
                proc.wait()
                print(f"ssa compare: {job['kind']} {job['name']} stopped at the time budget", file=sys.stderr)
                continue
            if rc != 0:
                log = tmp / f"{job['kind']}-{job['name']}.log"
                tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
                print(f"ssa compare: {job['kind']} {job['name']} failed (exit {rc}):\n{tail}", file=sys.stderr)
                continue
            results[i] = read_json(Path(job["report"]), "job report")
    return results


# ----------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------
def _check_args(args) -> None:
    for name in ("steps", "eval_rows", "attention_rows", "extrapolation_docs", "retrieval_samples", "eval_batch_size"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if args.time_budget is not None and args.time_budget <= 0:
        raise ValueError(f"--time-budget must be > 0 seconds, got {args.time_budget}")
    if args.eval_reserve is not None and (args.time_budget is None or not 0 <= args.eval_reserve < args.time_budget):
        raise ValueError("--eval-reserve needs --time-budget and must lie in [0, time budget)")
    if args.parallel != "auto" and (not args.parallel.isdigit() or int(args.parallel) < 1):
        raise ValueError(f"--parallel must be auto or an integer >= 1, got {args.parallel!r}")
    _floats("--depths", 0.0, 1.0)(args.depths)


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[3]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (sha + ("+uncommitted changes" if dirty else "")) if sha else None


def _device() -> tuple[str, str]:
    import platform

    import torch

    if torch.cuda.is_available():
        return "cuda", f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return "cpu", f"CPU ({os.cpu_count()} cores, {platform.machine()}), torch {torch.__version__}"


def _prepare_data(cfg: dict) -> None:
    """Tokenize the training and validation data once (filling the token cache) before any run."""
    from ssa.training.data import DataSpec, load_tokens
    from ssa.training.tokenizer import build_tokenizer

    data = DataSpec(**cfg["data"])
    if data.tokenizer.startswith("train-bpe:"):
        return  # each run trains its own tokenizer
    tok = build_tokenizer(data.tokenizer)
    for split in ("train", "val"):
        load_tokens(data, split, tok, cfg["train"]["seed"])


def run(args) -> int:
    from ssa.evaluation.compare import write_report

    if args.merge:
        out = Path(args.out or "report")
        analysis = write_report(args.merge, out, plots=not args.no_plots)
        _print_summary(analysis, out)
        return 0
    t_start = time.time()
    _check_args(args)
    base, preset = base_config(args)
    methods = args.methods or list(METHODS)
    sections = args.sections or list(DEFAULT_SECTIONS)
    args.eval_rows = args.eval_rows or 64
    if "test" in sections and not args.test_data:
        if args.sections:
            raise ValueError("--sections test needs --test-data FILE")
        sections = [s for s in sections if s != "test"]
    seeds = parse_seeds(args.seeds, methods)
    configs = run_configs(base, preset, seeds, args.overrides, args.steps)
    out = Path(args.out or f"runs/compare-{preset or 'custom'}")
    runs_dir = Path(args.runs_dir) if args.runs_dir else out / "runs"
    for name in configs:
        if (runs_dir / name).exists():
            raise ValueError(f"{runs_dir / name} already exists: choose another --out / --runs-dir")
    first = next(iter(configs.values()))
    train_len = first["data"]["seq_len"]
    device_type, device_text = _device()
    parallel = (len(configs) if device_type == "cuda" else 1) if args.parallel == "auto" else int(args.parallel)
    names = list(configs)
    tmp = out / ".jobs"
    deadline = None if args.time_budget is None else t_start + args.time_budget
    import shlex

    record = {"command": "ssa " + shlex.join(getattr(args, "_argv", None) or ["compare"]),
              "commit": _git_commit(), "device": device_text, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "time_budget_s": args.time_budget, "runs": names, "sections": sections, "parallel": parallel}
    from ssa.evaluation.compare import RESULTS_DIR, write_json

    write_json(out / "compare.json", record)
    _prepare_data(first)
    record["data_ready_s"] = time.time() - t_start

    # ---- probe and sizing -----------------------------------------------------------------------
    if args.time_budget is not None:
        reserve = args.eval_reserve if args.eval_reserve is not None else 0.3 * args.time_budget
        probe_cfgs = {}
        for name, cfg in configs.items():
            c = json.loads(json.dumps(cfg))
            c["train"].update(max_steps=PROBE_WARMUP + PROBE_TIMED, log_every=1, eval_batches=0,
                              warmup_steps=0, eval_every=10**9, save_every=10**9)
            probe_cfgs[name] = c
        # Probe in the same groups as training, so concurrent step times are measured as they will be.
        groups = group_runs(names, parallel)
        probes: dict[str, dict] = {}
        for gi, g in enumerate(groups):
            shutil.rmtree(tmp / f"probe-sync-{gi}", ignore_errors=True)  # no markers of an earlier call
            jobs = [{"kind": "probe", "name": n, "config": probe_cfgs[n], "run_dir": str(out / ".probe" / n),
                     "group_size": len(g), "sync_dir": str(tmp / f"probe-sync-{gi}"), "deadline": deadline,
                     "report": str(tmp / f"probe-{n}.out.json")} for n in g]
            for n, res in zip(g, run_jobs(jobs, len(g), tmp, deadline)):
                if res is None:
                    raise CommandError(f"the throughput probe of {n} failed; see {tmp}")
                probes[n] = res
        if device_type == "cuda" and args.parallel == "auto":
            parallel = _fit_parallel(names, probes)
            groups = group_runs(names, parallel)
        safety = SAFETY_FRACTION * args.time_budget
        plan = plan_steps(args.time_budget, time.time() - t_start, reserve, [[probes[n] for n in g] for g in groups],
                          safety)
        steps = plan["steps"]
        record.update(probe=probes, plan=plan, eval_reserve_s=reserve, parallel=parallel, steps=steps)
        if steps < 10 or (args.steps is not None and steps < args.steps):
            write_json(out / "compare.json", record)
            want = f"--steps {args.steps}" if args.steps is not None else "10 steps at least"
            raise ValueError(f"--time-budget {args.time_budget:g} s leaves {steps} training steps after the probe, "
                             f"fewer than {want} (see {out / 'compare.json'}): raise it, lower --eval-reserve or "
                             "shrink the model")
        steps = args.steps or steps
        record["steps"] = steps
        for cfg in configs.values():
            cfg["train"]["max_steps"] = cfg["train"]["eval_every"] = cfg["train"]["save_every"] = steps
            cfg["train"]["warmup_steps"] = min(cfg["train"]["warmup_steps"], steps // 10)
        shutil.rmtree(out / ".probe", ignore_errors=True)
    tokens = first["train"]["max_steps"] * first["train"]["micro_batch_size"] * first["train"]["grad_accum"] * train_len
    record.update(steps=first["train"]["max_steps"], tokens_per_run=tokens)
    write_json(out / "compare.json", record)
    print(f"ssa compare: {len(names)} runs ({', '.join(names)}), {record['steps']} steps = {tokens:,} tokens each, "
          f"{parallel} at a time on {device_text}", flush=True)

    # ---- train ----------------------------------------------------------------------------------
    results_dir = out / RESULTS_DIR
    train_deadline = None if deadline is None else deadline - 0.5 * record["eval_reserve_s"]
    jobs = [{"kind": "train", "name": n, "config": cfg, "run_dir": str(runs_dir / n),
             "progress": not args.no_progress and parallel == 1, "report": str(tmp / f"train-{n}.out.json")}
            for n, cfg in configs.items()]
    for job, res in zip(jobs, run_jobs(jobs, parallel, tmp, train_deadline)):
        if res is None:
            continue
        cfg = job["config"]
        write_json(results_dir / f"{job['name']}.json",
                   {"name": job["name"], "method": cfg["method"], "seed": cfg["train"]["seed"], "config": cfg,
                    "train": {k: v for k, v in res.items() if k != "metrics"}, "metrics": res["metrics"],
                    "eval_commands": ["ssa eval " + " ".join(c) for c in
                                      eval_commands(args, sections, train_len, str(runs_dir / job["name"]))],
                    "eval": {}})
    record["train_done_s"] = time.time() - t_start

    # ---- evaluate -------------------------------------------------------------------------------
    trained = [j["name"] for j in jobs if (results_dir / f"{j['name']}.json").is_file()]
    eval_deadline = None if deadline is None else deadline - 15  # the report needs a few seconds
    ejobs = [{"kind": "eval", "name": n, "run_dir": str(runs_dir / n), "result": str(results_dir / f"{n}.json"),
              "commands": eval_commands(args, sections, train_len, str(runs_dir / n)), "deadline": eval_deadline,
              "report": str(tmp / f"eval-{n}.out.json")} for n in trained]
    run_jobs(ejobs, parallel, tmp, eval_deadline)
    # wall_s: start to the end of evaluation (the report takes a few seconds more)
    record.update(eval_done_s=time.time() - t_start, wall_s=time.time() - t_start,
                  trained=trained, failed=[n for n in names if n not in trained])
    write_json(out / "compare.json", record)
    if not trained:
        raise CommandError(f"no run finished training; logs in {tmp}")
    analysis = write_report([out], out / "report", plots=not args.no_plots)
    record["report_done_s"] = time.time() - t_start
    if args.time_budget is not None:  # runs that finish early leave time over: say how much was used
        record["budget_used"] = record["report_done_s"] / args.time_budget
    write_json(out / "compare.json", record)
    if sections != ["copy"]:  # the claims need perplexities: a copy-only run would print "not measured" only
        _print_summary(analysis, out / "report")
    if "copy" in sections:
        print(copy_reading(out))
    return 0


def _fit_parallel(names: list[str], probes: dict) -> int:
    """How many runs share the GPU: all, unless their measured peaks exceed 90% of its memory."""
    import torch

    total = torch.cuda.get_device_properties(0).total_memory
    peaks = [probes[n].get("peak_memory_bytes") or 0 for n in names]
    k = len(names)
    while k > 1 and sum(sorted(peaks, reverse=True)[:k]) > 0.9 * total:
        k -= 1
    return k


def _print_summary(analysis: dict, out: Path) -> None:
    for name, c in analysis["claims"].items():
        print(f"{name:5s} {c['verdict']:17s} {c['text']}")
    print(f"report: {out / 'report.md'}")


def copy_reading(out: Path) -> str:
    """The copy task's side-by-side table of copy accuracy and perplexity, and its one-line reading."""
    from ssa.evaluation.compare import load_dirs

    from ssa.evaluation.results import table

    runs, _ = load_dirs([out])
    rows, acc = [], {}
    for r in runs:
        copy = (r["eval"].get("copy") or {}).get("modes", {})
        ppl = {(x["mode"], x["block_count"]): x["ppl"] for x in (r["eval"].get("perplexity") or {}).get("results", [])}
        n = r["config"]["model"]["block_count"]
        full, sparse = (copy.get("full") or {}).get("accuracy"), (copy.get("sparse") or {}).get("accuracy")
        acc[r["name"]] = (full, sparse)
        rows.append([r["name"], full, sparse, ppl.get(("full", None)), ppl.get(("sparse", n))])
    head = ["run", "copy acc, full attention", f"copy acc, sparse ({runs[0]['config']['model']['block_count']} blocks)",
            "ppl full", "ppl sparse"]
    if all(r[3] is None and r[4] is None for r in rows):  # no perplexity section: no empty columns
        head, rows = head[:3], [r[:3] for r in rows]
    text = table(head, rows)
    line = reading(acc, runs[0]["config"]["model"], {r["name"]: r["method"] for r in runs})
    return f"\n{text}\n\n{line}"


LEARNED = 0.5  # full-attention copy accuracy below this: the run has not learned the task
CLEAR = 0.2  # difference in the kept fraction that counts as a clear effect


def reading(acc: dict, model: dict, methods: dict | None = None) -> str:
    """What the copy accuracies say, computed from them: per run the share of its full-attention
    accuracy kept under sparse inference, then one verdict on FullAttn against SSA (their runs'
    means). `acc` = {run: (full, sparse)}, `methods` = {run: method}."""
    from ssa.model.config import METHOD_NAMES

    budget = f"{model['block_count']} blocks of {model['block_size']} tokens"
    methods = methods or {}
    parts, kept = [], {}
    for name, (full, sparse) in acc.items():
        if full is None or sparse is None:
            continue
        k = sparse / full if full > 0 else 0.0
        kept.setdefault(methods.get(name, name), []).append((full, k))
        parts.append(f"{name} keeps {100 * k:.0f}% of its full-attention copy accuracy ({100 * full:.0f}% -> {100 * sparse:.0f}%)")
    if not parts:
        return "Reading: no copy accuracy measured."
    text = f"Reading (sparse budget {budget}): " + "; ".join(parts) + "."
    if "full" in kept and "ssa" in kept:
        mean = {m: (sum(f for f, _ in v) / len(v), sum(k for _, k in v) / len(v)) for m, v in kept.items()}
        untrained = [m for m in ("full", "ssa") if mean[m][0] < LEARNED]
        if untrained:
            text += (f" {' and '.join(METHOD_NAMES[m] for m in untrained)} copied less than {100 * LEARNED:.0f}% under full "
                     "attention: not learned yet, train longer (--steps).")
        elif mean["ssa"][1] - mean["full"][1] >= CLEAR:
            text += " SSA keeps its copying under sparse inference, FullAttn loses it."
        elif mean["full"][1] - mean["ssa"][1] >= CLEAR:
            text += " FullAttn keeps more of its copying than SSA: the expected effect does not show here."
        else:
            text += f" FullAttn and SSA keep about as much (within {100 * CLEAR:.0f} points): no clear effect at this budget."
    return text


def worker(argv: list[str]) -> int:
    """`python -m ssa.commands.compare worker JOB.json`: one job in a child process."""
    if len(argv) != 2 or argv[0] != "worker":
        print("usage: python -m ssa.commands.compare worker JOB.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    run_job(job)
    return 0


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1:]))
