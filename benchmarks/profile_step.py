"""Where the time of a training step or a decode step goes: torch.profiler kernel tables, kernel
time grouped by what the kernel does, GPU-busy time against wall time (the host gap), and the
number of kernel launches per step.

    python benchmarks/profile_step.py train OUT.json [--shape pilot|300m] [--methods plain,full,ssa] [--compile]
    python benchmarks/profile_step.py decode OUT.json [--context 131072] [--batches 1,8] [--modes sparse,full]

train   One optimizer step as `ssa train` runs it: `Trainer.train_step()` of a trainer built from a
        config (random-token synthetic data, bf16 autocast, the trainer's AdamW, clipping, its one
        host sync per step, `train.compile` when --compile). `plain` is the step of
        `benchmarks/plain_gpt.py` at the same shape (compiled with --compile, else eager), so the
        difference between the two is attributable kernel group by kernel group.
        `pilot`: hidden 512, 8 layers, 8/2 heads, 2048 tokens, micro-batch 16, vocabulary 50257
        padded to 50304. `300m`: configs/300m.json at 8192 tokens, micro-batch 4, padded to 50304.
decode  The one-token greedy step of the 300m preset as `ssa.generation.greedy_generate` runs it:
        a static cache and the step captured as a CUDA graph (`GreedyStep`). The cache is filled
        with random keys and values through its own begin/write/commit (what a prefill does per
        layer), not by a prefill of the model: a 128k-token cache costs a few milliseconds. Graph
        replays are timed with CUDA events and profiled; the same step run eagerly is profiled too
        (its kernels are the graph's), which also covers a profiler that shows no kernels inside
        replays.

Every result is appended to OUT.json (a list) as soon as it is measured, so a run cut short keeps
what it finished. `--summary OUT.json...` prints the markdown tables of earlier results.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

# Fine groups, first match wins; the names are CUDA kernel names as the profiler reports them.
TRAIN_GROUPS = [
    ("selection (triton)", r"_select_kernel|_block_keys_kernel"),
    ("sparse attn fwd (triton)", r"^_fwd_kernel"),
    ("sparse attn dq (triton)", r"^_dq_kernel"),
    ("sparse attn dk/dv (triton)", r"^_dkdv_kernel"),
    ("inverted index (triton)", r"_scan_kernel|_scatter|_items_kernel|_count_kernel"),
    ("alignment + gates (triton)", r"^_(gated_)?align_"),  # not cutlass "..._align1" GEMMs
    ("dense attention (SDPA)", r"flash|fmha|cudnn|attention|sdpa"),
    ("matmul", r"gemm|cutlass|xmma|nvjet|sm90_|cublas|wgmma|gemv|triton_tem_fused_(mm|addmm|bmm)"),
    ("optimizer", r"multi_tensor|adam|Adam|foreach"),
    ("inductor fused", r"^triton_(poi|per|red)_"),
    ("reductions / norms / loss", r"reduce|Reduce|sum|norm|softmax|cross_entropy|nll|log_softmax|scan"),
    ("copies / casts", r"copy|Copy|cast|CatArrayBatched|fill|Fill|memcpy|Memcpy|memset|Memset|index|gather|scatter"),
    ("elementwise", r"elementwise|vectorized|unrolled|Elementwise"),
]
TRAIN_COARSE = {
    "matmul": "matmul",
    "dense attention (SDPA)": "attention",
    "selection (triton)": "selection+sparse",
    "sparse attn fwd (triton)": "selection+sparse",
    "sparse attn dq (triton)": "selection+sparse",
    "sparse attn dk/dv (triton)": "selection+sparse",
    "inverted index (triton)": "selection+sparse",
    "alignment + gates (triton)": "selection+sparse",
    "inductor fused": "elementwise+casts",
    "reductions / norms / loss": "elementwise+casts",
    "copies / casts": "elementwise+casts",
    "elementwise": "elementwise+casts",
    "optimizer": "optimizer",
}
DECODE_GROUPS = [
    ("selection", r"_split_stats|_split_topk|_select"),
    ("decode attention", r"_merge_attend|_combine|flash|fmha|cudnn|attention|sdpa"),
    ("matmul", r"gemm|cutlass|xmma|nvjet|sm90_|cublas|wgmma|gemv|splitK|splitk"),
    ("sampling", r"argmax|ArgMax|arg_max"),
    ("cache write", r"index_put|indexing|scatter|gather|index_elementwise"),
    ("norm+rope+elementwise", r"elementwise|vectorized|unrolled|reduce|Reduce|norm|copy|cast|fill|Fill|Cat|triton_"),
]
DECODE_COARSE = {g: g for g, _ in DECODE_GROUPS}


def group_of(name: str, groups) -> str:
    for group, pattern in groups:
        if re.search(pattern, name):
            return group
    return "other"


def _append(path: str, record: dict) -> None:
    p = Path(path)
    data = json.loads(p.read_text()) if p.is_file() and p.stat().st_size else []
    data.append(record)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(p)


def _busy_ms(intervals) -> float:
    """Length of the union of [start, end] intervals (microseconds in, milliseconds out)."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total / 1e3


def kernel_table(prof, steps: int, groups, coarse: dict, cuda: bool = True) -> dict:
    """Per-step kernel statistics of a finished torch.profiler run over `steps` steps. (Without CUDA
    the CPU operator events stand in for kernels: only to check the script itself on a CPU.)"""
    import torch

    kernels = defaultdict(lambda: [0.0, 0])
    intervals = []
    want = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    for evt in prof.events():
        if evt.device_type != want:
            continue
        k = kernels[evt.name]
        k[0] += (evt.device_time_total if cuda else evt.self_cpu_time_total) / 1e3
        k[1] += 1
        try:
            intervals.append((evt.time_range.start, evt.time_range.end))
        except AttributeError:
            pass
    fine = defaultdict(float)
    for name, (ms, _) in kernels.items():
        fine[group_of(name, groups)] += ms / steps
    by_coarse = defaultdict(float)
    for g, ms in fine.items():
        by_coarse[coarse.get(g, "other")] += ms
    launches = sum(c for _, c in kernels.values())
    copies = sum(c for n, (_, c) in kernels.items() if re.match(r"Memcpy|Memset", n))
    return {
        "kernel_ms_per_step": sum(fine.values()),
        "gpu_busy_ms_per_step": _busy_ms(intervals) / steps if intervals else None,
        "launches_per_step": launches / steps,
        "memcpy_memset_per_step": copies / steps,
        "groups": dict(sorted(by_coarse.items(), key=lambda kv: -kv[1])),
        "fine_groups": dict(sorted(fine.items(), key=lambda kv: -kv[1])),
        "top_kernels": sorted(([n, ms / steps, c / steps, group_of(n, groups)] for n, (ms, c) in kernels.items()),
                              key=lambda r: -r[1])[:30],
    }


def measure(step, steps: int, warmup: int, groups, coarse: dict, sync_each: bool = False) -> dict:
    """Wall time per step (CUDA events, no profiler), host time to issue a step, then a profiled
    run of the same number of steps."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    host = []
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    t_all = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        if sync_each:
            sync()
        host.append(1e3 * (time.perf_counter() - t0))
    if cuda:
        end.record()
        end.synchronize()
        wall = start.elapsed_time(end) / steps
    else:
        wall = 1e3 * (time.perf_counter() - t_all) / steps
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
        sync()
    res = {"wall_ms_per_step": wall, "host_ms_per_step_median": sorted(host)[len(host) // 2]}
    res.update(kernel_table(prof, steps, groups, coarse, cuda))
    busy = res["gpu_busy_ms_per_step"] or res["kernel_ms_per_step"]
    res["host_gap_ms_per_step"] = wall - busy
    return res


# ------------------------------------------------------------------------------------------ train
SHAPES = {
    "pilot": dict(model=dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
                             max_position_embeddings=2048, rope_theta=500000.0, tie_word_embeddings=True,
                             block_size=16, block_count=16),
                  seq_len=2048, batch=16),
    "300m": dict(model=None, seq_len=8192, batch=4),  # configs/300m.json
    # Only to check this script on a CPU (python benchmarks/profile_step.py train X --shape tiny).
    "tiny": dict(model=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=128, block_size=16, block_count=2),
                 seq_len=128, batch=2),
}


def train_config(shape: str, method: str, compile: bool, vocab: int = 50257, pad: int = 64, steps: int = 20,
                 device: str = "auto", overrides: dict | None = None) -> dict:
    """A resolved `ssa train` config of `shape`: synthetic data with enough rows for `steps` steps."""
    from ssa.training.config import load_preset, resolve_config

    s = SHAPES[shape]
    model = dict(s["model"]) if s["model"] is not None else dict(load_preset("300m")["model"])
    model.pop("_comment", None)
    model.update(vocab_size=vocab, pad_vocab_multiple=pad, max_position_embeddings=s["seq_len"])
    model.update((overrides or {}).get("model", {}))
    train = dict(micro_batch_size=s["batch"], grad_accum=1, max_steps=10_000, warmup_steps=10, log_every=10_000,
                 eval_every=10_000, save_every=10_000, device=device, compile=compile, num_threads=None)
    train.update((overrides or {}).get("train", {}))
    seq = (overrides or {}).get("seq_len", s["seq_len"])
    rows = train["micro_batch_size"] * (steps + 2)
    data = dict(source="synthetic-recall", tokenizer="bytes", seq_len=seq,
                synthetic_train_bytes=int(rows * (seq + 1) * 1.1), synthetic_val_bytes=4 * (seq + 1))
    return resolve_config({"model": model, "train": train, "data": data}, method=method)


def trainer_step(cfg: dict, run_dir):
    """(step, trainer): `Trainer.train_step` of a built trainer (nothing is written to run_dir)."""
    from ssa.training import distributed as dist
    from ssa.training.trainer import Trainer

    info = dist.DistInfo()
    device = dist.pick_device(cfg["train"]["device"], info)
    trainer = Trainer(cfg, run_dir, info=info, device=device, progress=False).build()
    return trainer.train_step, trainer


def plain_train_step(shape: str, compile: bool):
    """The step of benchmarks/plain_gpt.py at `shape` (the plain reference model; pilot only: its
    SwiGLU width is the one SSAConfig derives, which the 300m preset overrides)."""
    if SHAPES[shape]["model"] is None:
        raise ValueError(f"the plain reference is profiled at the pilot shape only, not {shape!r}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import plain_gpt

    s = SHAPES[shape]
    m = s["model"]
    args = argparse.Namespace(hidden=m["hidden_size"], layers=m["num_hidden_layers"], heads=m["num_attention_heads"],
                              kv_heads=m["num_key_value_heads"], seq_len=s["seq_len"], batch=s["batch"], vocab=50257)
    return plain_gpt.plain_step(args, 50304, compile=compile)


def profile_train(args) -> list[dict]:
    import torch

    out = []
    cuda = torch.cuda.is_available()
    for method in args.methods.split(","):
        try:
            res = _profile_train_method(args, method, cuda)
        except Exception as err:  # one method's failure must not cost the others their profile
            import traceback

            traceback.print_exc()
            res = {"part": "train", "shape": args.shape, "method": method, "compiled": args.compile,
                   "error": f"{type(err).__name__}: {err}"}
            print(f"[train {args.shape} {method}] failed: {res['error']}", flush=True)
        else:
            print(f"[train {args.shape} {method}{' compiled' if args.compile else ''}] wall {res['wall_ms_per_step']:.1f} ms, "
                  f"kernels {res['kernel_ms_per_step']:.1f} ms, {res['launches_per_step']:.0f} launches/step", flush=True)
        _append(args.out, res)
        out.append(res)
    return out


def _profile_train_method(args, method: str, cuda: bool) -> dict:
    import torch

    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if method == "plain":
            step, holder = plain_train_step(args.shape, args.compile)
            params = sum(p.numel() for p in holder.parameters())
        else:
            cfg = train_config(args.shape, method, args.compile, steps=args.steps * 2 + args.warmup + 8)
            step, holder = trainer_step(cfg, Path(tmp) / "run")
            params = sum(p.numel() for p in holder.model.parameters())
            if method == "ssa":
                # Both SSA modes once before timing: compiled blocks hold one graph per mode, and
                # the second one must not be compiled inside the timed steps.
                seen = set()
                for _ in range(8):
                    seen |= set(step()["attention_modes"])
                    if len(seen) == 2:
                        break
        build_s = time.perf_counter() - t0
        res = measure(step, args.steps, args.warmup, TRAIN_GROUPS, TRAIN_COARSE)
        s = SHAPES[args.shape]
        tokens = s["batch"] * s["seq_len"]
        res.update(part="train", shape=args.shape, method=method, compiled=args.compile,
                   tokens_per_step=tokens, tokens_per_s=tokens / res["wall_ms_per_step"] * 1e3,
                   params_m=params / 1e6, peak_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
                   build_s=build_s, device=torch.cuda.get_device_name() if cuda else "cpu")
        del step, holder
    return res


# ------------------------------------------------------------------------------------------ decode
def fill_cache(model, cache, batch: int, context: int, generator=None) -> None:
    """Random keys and values for `context` tokens per row, through the cache's own per-layer write
    (block means included), as a prefill would leave them; no model forward."""
    import torch

    cfg = model.config
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    step = cache.begin(None, batch, context, device)
    for i in range(cfg.num_hidden_layers):
        k, v = (torch.randn(batch, context, cfg.num_key_value_heads, cfg.head_dim, device=device, dtype=dtype,
                            generator=generator) for _ in range(2))
        cache.write(i, k, v, step)
    cache.commit(step)


def decode_model(preset: str, context: int, layers: int | None = None):
    """The preset's SSA model with random weights: bf16 on CUDA (float32 on a CPU, for checks)."""
    import torch

    from ssa.commands.bench import preset_shape
    from ssa.model import SSAConfig, SSAForCausalLM

    shape = preset_shape(preset, layers=layers, seq_len=context + 1024)
    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    with device:  # initialised where it runs: seconds saved on a 300M-parameter model
        model = SSAForCausalLM(SSAConfig(method="ssa", vocab_size=50257, **shape))
    return model.to(device, torch.bfloat16 if cuda else torch.float32).eval(), shape


def _profile_decode_mode(args, model, cache, B: int, mode: str, first, fill_s: float) -> dict:
    import torch

    from ssa.generation import GreedyStep

    L = args.context  # rewind the cache to the prompt: slots past a row's length are never read
    cache.host_lengths, cache.seen_tokens = [L] * B, L
    cache.lengths.fill_(L)
    step = GreedyStep(model, cache, attention_mode=mode)  # captured on CUDA, as greedy_generate does
    tok = first
    for _ in range(3):  # two eager warm-ups on a side stream, then the capture and its first replay
        tok = step(tok)
    res = {"part": "decode", "preset": args.preset, "context": L, "batch": B, "mode": mode,
           "cache_fill_s": fill_s, "captured": step.graph is not None,
           "device": torch.cuda.get_device_name() if step.capture else "cpu"}
    def eager():  # the step's own code, uncaptured (GreedyStep runs it under no_grad too)
        with torch.no_grad():
            return step._step(tok)

    # The captured step alone (graph replays; each advances the device-side lengths).
    replay_fn = step.graph.replay if step.graph is not None else eager
    replay = measure(replay_fn, args.steps, 2, DECODE_GROUPS, DECODE_COARSE)
    res["replay"] = replay
    # What greedy_generate pays per token: the replay plus its host bookkeeping.
    t0 = time.perf_counter()
    for _ in range(args.steps):
        tok = step(tok)
    if step.capture:
        torch.cuda.synchronize()
    res["generate_ms_per_step"] = 1e3 * (time.perf_counter() - t0) / args.steps
    res["tokens_per_s"] = B * 1e3 / res["generate_ms_per_step"]
    # The same step uncaptured: its kernels are those the graph holds, and its wall time is what
    # the host costs without the graph.
    res["eager"] = measure(eager, 3, 1, DECODE_GROUPS, DECODE_COARSE, sync_each=True)
    res["profiler_sees_replay_kernels"] = replay["launches_per_step"] > 0
    k = replay if res["profiler_sees_replay_kernels"] else res["eager"]
    attn = k["groups"].get("decode attention", 0.0) + k["groups"].get("selection", 0.0)
    res["attention_share"] = attn / k["kernel_ms_per_step"] if k["kernel_ms_per_step"] else None
    res["attention_ms_per_step"] = attn
    print(f"[decode {L // 1024}k B={B} {mode}] replay {replay['wall_ms_per_step'] * 1e3:.0f} us/step, "
          f"{k['launches_per_step']:.0f} kernels/step, attention {attn * 1e3:.0f} us "
          f"({100 * (res['attention_share'] or 0):.0f}%), generate {res['generate_ms_per_step']:.2f} ms/step",
          flush=True)
    del step
    return res


def profile_decode(args, model=None) -> list[dict]:
    import torch

    if model is None:
        model, _ = decode_model(args.preset, args.context, layers=args.layers)
    if not torch.cuda.is_available():
        print("# no CUDA: the decode step runs eagerly (checks the script only)", flush=True)
    out = []
    for B in [int(b) for b in args.batches.split(",")]:
        cache = model.new_cache(max_length=args.context + 4 * args.steps + 64)
        t0 = time.perf_counter()
        fill_cache(model, cache, B, args.context)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        fill_s = time.perf_counter() - t0
        first = torch.randint(1, 50257, (B, 1), device=cache.lengths.device)
        for mode in args.modes.split(","):
            try:
                res = _profile_decode_mode(args, model, cache, B, mode, first, fill_s)
            except Exception as err:  # the other rows still get measured
                import traceback

                traceback.print_exc()
                res = {"part": "decode", "context": args.context, "batch": B, "mode": mode,
                       "error": f"{type(err).__name__}: {err}"}
                print(f"[decode B={B} {mode}] failed: {res['error']}", flush=True)
            _append(args.out, res)
            out.append(res)
            torch.cuda.empty_cache()
        del cache
        torch.cuda.empty_cache()
    return out


# ----------------------------------------------------------------------------------------- summary
def _fmt_groups(groups: dict, order) -> str:
    return " | ".join(f"{groups.get(g, 0.0):.2f}" for g in order)


def _differences(train: list[dict]) -> list[str]:
    """Where one step's extra time goes against another's: ours - plain and ssa - full, by fine group."""
    lines = []
    by = {(r["shape"], r["compiled"], r["method"]): r for r in train}
    for (shape, compiled, method), r in by.items():
        for other, base in (("full", "plain"), ("ssa", "full")):
            b = by.get((shape, compiled, base))
            if method != other or b is None:
                continue
            groups = set(r["fine_groups"]) | set(b["fine_groups"])
            diff = sorted(((g, r["fine_groups"].get(g, 0.0) - b["fine_groups"].get(g, 0.0)) for g in groups),
                          key=lambda kv: -abs(kv[1]))
            lines += ["", f"{other} - {base}, {shape}{' compiled' if compiled else ''}: wall "
                      f"{r['wall_ms_per_step'] - b['wall_ms_per_step']:+.1f} ms, kernels "
                      f"{r['kernel_ms_per_step'] - b['kernel_ms_per_step']:+.1f} ms, host gap "
                      f"{r['host_gap_ms_per_step'] - b['host_gap_ms_per_step']:+.1f} ms, launches "
                      f"{r['launches_per_step'] - b['launches_per_step']:+.0f}; by group (ms): "
                      + ", ".join(f"{g} {d:+.2f}" for g, d in diff[:8])]
    return lines


def summary(records: list[dict]) -> str:
    lines = []
    errors = [r for r in records if "error" in r]
    records = [r for r in records if "error" not in r]
    train = [r for r in records if r.get("part") == "train"]
    if train:
        order = ["matmul", "attention", "selection+sparse", "elementwise+casts", "optimizer", "other"]
        lines += ["### Training step (ms per step; GPU kernel time by group)", "",
                  "| shape | step | compiled | wall ms | tokens/s | kernel ms | GPU busy ms | host gap ms | launches | "
                  + " | ".join(order) + " | peak GiB |",
                  "|" + "---|" * (11 + len(order))]
        for r in train:
            lines.append(f"| {r['shape']} | {r['method']} | {r['compiled']} | {r['wall_ms_per_step']:.1f} | "
                         f"{r['tokens_per_s']:,.0f} | {r['kernel_ms_per_step']:.1f} | {r['gpu_busy_ms_per_step'] or 0:.1f} | "
                         f"{r['host_gap_ms_per_step']:.1f} | {r['launches_per_step']:.0f} | "
                         f"{_fmt_groups(r['groups'], order)} | {r['peak_gib']:.1f} |")
        lines += _differences(train)
        for r in train:
            lines += ["", f"Top kernels, {r['shape']} {r['method']}{' compiled' if r['compiled'] else ''} "
                      "(ms per step, launches per step, group):", ""]
            lines += [f"- {ms:.3f} ms x{c:.0f} [{g}] {n[:100]}" for n, ms, c, g in r["top_kernels"][:10]]
    dec = [r for r in records if r.get("part") == "decode"]
    if dec:
        order = [g for g, _ in DECODE_GROUPS] + ["other"]
        lines += ["", "### Decode step, captured (per step; GPU kernel time by group in microseconds)", "",
                  "| context | B | mode | replay us | generate ms/step | tokens/s | eager step ms | kernels/step | kernel us | "
                  + " | ".join(order) + " | attention share | kernels seen in replay |",
                  "|" + "---|" * (11 + len(order))]
        for r in dec:
            k = r["replay"] if r["profiler_sees_replay_kernels"] else r["eager"]
            groups = " | ".join(f"{1e3 * k['groups'].get(g, 0.0):.0f}" for g in order)
            lines.append(f"| {r['context'] // 1024}k | {r['batch']} | {r['mode']} | {1e3 * r['replay']['wall_ms_per_step']:.0f} | "
                         f"{r['generate_ms_per_step']:.2f} | {r['tokens_per_s']:.0f} | {r['eager']['wall_ms_per_step']:.2f} | "
                         f"{k['launches_per_step']:.0f} | "
                         f"{1e3 * k['kernel_ms_per_step']:.0f} | {groups} | {100 * (r['attention_share'] or 0):.0f}% | "
                         f"{r['profiler_sees_replay_kernels']} |")
        for r in dec:
            k = r["replay"] if r["profiler_sees_replay_kernels"] else r["eager"]
            lines += ["", f"Top kernels, decode {r['context'] // 1024}k B={r['batch']} {r['mode']} "
                      "(us per step, launches per step, group):", ""]
            lines += [f"- {1e3 * ms:.1f} us x{c:.0f} [{g}] {n[:100]}" for n, ms, c, g in k["top_kernels"][:12]]
    if errors:
        lines += ["", "### Not measured", ""]
        lines += [f"- {r.get('part')} {r.get('shape', '')} {r.get('method', r.get('mode', ''))} "
                  f"{'B=' + str(r['batch']) if 'batch' in r else ''}: {r['error'][:200]}" for r in errors]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="part", required=True)
    t = sub.add_parser("train", help="profile training steps")
    t.add_argument("out")
    t.add_argument("--shape", choices=sorted(SHAPES), default="pilot")
    t.add_argument("--methods", default="plain,full,ssa", help="plain (benchmarks/plain_gpt.py) and/or ssa methods")
    t.add_argument("--compile", action="store_true", help="train.compile=true (and the plain model compiled)")
    t.add_argument("--steps", type=int, default=5)
    t.add_argument("--warmup", type=int, default=3)
    d = sub.add_parser("decode", help="profile the captured greedy decode step")
    d.add_argument("out")
    d.add_argument("--preset", default="300m")
    d.add_argument("--layers", type=int, default=None, help="override the preset's layer count")
    d.add_argument("--context", type=int, default=131072)
    d.add_argument("--batches", default="1,8")
    d.add_argument("--modes", default="sparse,full")
    d.add_argument("--steps", type=int, default=20)
    s = sub.add_parser("summary", help="markdown tables of result files")
    s.add_argument("files", nargs="+")
    args = p.parse_args(argv)
    if args.part == "summary":
        records = []
        for f in args.files:
            if Path(f).is_file():
                records += json.loads(Path(f).read_text())
        print(summary(records))
        return 0
    {"train": profile_train, "decode": profile_decode}[args.part](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
