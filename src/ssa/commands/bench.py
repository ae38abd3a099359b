"""`ssa bench attention|decode|train-step`: GPU timings of the sparse kernels, decoding and training steps.

attention: selection alone, sparse forward (selection + attention), sparse backward and the peak
memory of forward + backward, against the fastest dense attention measured in the same process
(`fastest_dense`: SDPA's default dispatch and each backend, GQA-native and K/V expanded), and
FlexAttention with the same selection as a second baseline where it fits.
decode: see `bench_decode` (per-layer decode attention and greedy tokens/s under CUDA graphs).
train-step: one optimizer step (forward, backward, AdamW) of a model shape for several methods, with
tokens/s and model-FLOPs utilisation (FLOPs per token from `ssa.training.flops`).

Times are medians of `triton.testing.do_bench` (CUDA events, warm-up excluded).
"""

from __future__ import annotations

import json
import platform
import time

import torch

from ..cli import CommandError


def add_shape_arguments(p, rep_ms: int) -> None:
    """The attention shape (the 300m preset's by default) and timing budget of the kernel benchmarks."""
    p.add_argument("--q-heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=1)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--block-count", type=int, default=16)
    p.add_argument("--rep-ms", type=int, default=rep_ms, help="do_bench repetition budget per measurement")


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="WHAT", required=True)
    a = sub.add_parser("attention", help="selection / sparse attention kernels vs SDPA and FlexAttention")
    a.add_argument("--seq-lens", default="4096,8192,16384,32768,65536,131072",
                   help="comma-separated sequence lengths (default: 4k..128k)")
    a.add_argument("--batch", type=int, default=1)
    add_shape_arguments(a, rep_ms=200)
    a.add_argument("--dtype", choices=("bfloat16", "float16"), default="bfloat16")
    a.add_argument("--flex-max-len", type=int, default=16384,
                   help="run the FlexAttention baseline up to this length (0: never); it needs a "
                        "[T, T/s] selection map and compiles once per shape")
    a.add_argument("--forward-only", action="store_true",
                   help="time selection and the forward only (no backward, peak memory or FlexAttention)")
    a.add_argument("--json", default=None, help="also write the results to this JSON file")

    from .bench_decode import add_arguments as add_decode_arguments

    add_decode_arguments(sub)

    t = sub.add_parser("train-step", help="one forward+backward+AdamW step per method")
    t.add_argument("--preset", default="300m", help="model shape preset (configs/NAME.json)")
    t.add_argument("--methods", default="full,moba,ssa")
    t.add_argument("--seq-len", type=int, default=8192)
    t.add_argument("--batch", type=int, default=1)
    t.add_argument("--vocab-size", type=int, default=50257)
    t.add_argument("--layers", type=int, default=None, help="override the preset's layer count")
    t.add_argument("--steps", type=int, default=10, help="steps per timing window (after 3 warm-up steps)")
    t.add_argument("--windows", type=int, default=5, help="timing windows per method, interleaved across methods")
    t.add_argument("--one-at-a-time", action="store_true",
                   help="build and time one method after the other instead of keeping all models on the "
                        "GPU together (for shapes whose models do not fit side by side)")
    t.add_argument("--full-ratio", type=float, default=None,
                   help="SSA mode draw; default: the preset's (the step cost does not depend on it: "
                        "both streams run every step)")
    t.add_argument("--compile", action="store_true", help="torch.compile each decoder block (train.compile)")
    t.add_argument("--activation-checkpointing", action="store_true", help="as train.activation_checkpointing")
    t.add_argument("--set", action="append", metavar="model.KEY=VALUE",
                   help="override a model setting of the preset, e.g. model.pad_vocab_multiple=64 (repeatable)")
    t.add_argument("--peak-tflops", type=float, default=None,
                   help="peak bf16 TFLOP/s of the GPU for MFU (default: a table by device name)")
    t.add_argument("--json", default=None)


def run(args) -> int:
    if not torch.cuda.is_available():
        raise CommandError("ssa bench needs a CUDA GPU (the kernels it times are GPU kernels)")
    if args.bench == "decode":
        from .bench_decode import run as bench_decode

        results = bench_decode(args)
    else:
        results = bench_attention(args) if args.bench == "attention" else bench_train_step(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def environment() -> dict:
    import triton

    return {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------------------------------- attention


def _median_ms(fn, rep_ms: int, grad_to_none=None) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=rep_ms, grad_to_none=grad_to_none, return_mode="median"))


def _peak_mib(fn) -> float:
    """Peak memory allocated by fn beyond what was allocated before it, MiB."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


# ----------------------------------------------------------------------------------- dense baselines
# Every speed ratio the project reports is taken against the fastest dense attention that runs in
# the same process: SDPA's default dispatch and each of its GPU backends, with grouped K/V heads
# (enable_gqa) and with K/V expanded to one head per query head (stored expanded beforehand, as an
# engine with an expanded cache would hold them).

DENSE_BACKENDS = ("default", "flash", "cudnn", "efficient")


def sdpa_causal(q, k, v, scale, backend: str = "default", causal: bool = True, attn_mask=None):
    """SDPA on [B, T, H, D] inputs (k/v with HK heads; grouped natively when HK < HQ).

    backend: "default" (SDPA's own dispatch), "flash", "cudnn", "efficient" or "math"; on CPU every
    backend runs as math (dry runs of the benchmark scripts)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    gqa = {"enable_gqa": True} if k.shape[2] != q.shape[2] else {}
    kinds = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    if not q.is_cuda:
        backend = "math"

    def call():
        return torch.nn.functional.scaled_dot_product_attention(
            qt, kt, vt, attn_mask=attn_mask, is_causal=causal, scale=scale, **gqa).transpose(1, 2)

    if backend == "default":
        return call()
    with sdpa_kernel([kinds[backend]]):
        return call()


def dense_variants(q, k, v, scale, causal: bool = True, attn_mask=None) -> dict:
    """name -> closure for every dense variant that runs on these inputs (tried once each)."""
    HQ, HK = q.shape[2], k.shape[2]
    kv = {"gqa": (k, v)}
    if HK != HQ:
        kv["expanded"] = (k.repeat_interleave(HQ // HK, 2), v.repeat_interleave(HQ // HK, 2))
    out = {}
    for backend in DENSE_BACKENDS if q.is_cuda else ("default",):
        for layout, (kk, vv) in kv.items():
            fn = (lambda b=backend, kk=kk, vv=vv: sdpa_causal(q, kk, vv, scale, b, causal, attn_mask))
            try:
                fn()
            except RuntimeError:  # this backend does not take these inputs
                continue
            out[f"sdpa-{backend}/{layout}"] = fn
    return out


def fastest_dense(variants: dict, timer) -> tuple[str, float, dict]:
    """Time every variant with timer(fn) -> ms; returns (name of the fastest, its ms, all times)."""
    times = {name: timer(fn) for name, fn in variants.items()}
    best = min(times, key=times.get)
    return best, times[best], times


def _flex_runner(q, k, v, idx, s, scale):
    """FlexAttention computing the same block-sparse attention from a [T, T/s] selection map."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    B, T, HQ, _ = q.shape
    HK = k.shape[2]
    nb = -(-T // s)
    selected = torch.zeros(B, HK, T, nb, dtype=torch.bool, device=q.device)
    valid = idx >= 0
    b_i, t_i, h_i, j_i = valid.nonzero(as_tuple=True)
    selected[b_i, h_i, t_i, idx[b_i, t_i, h_i, j_i].long()] = True
    G = HQ // HK

    def mask_mod(b, h, q_idx, kv_idx):
        return selected[b, h // G, q_idx, kv_idx // s] & (kv_idx <= q_idx)

    mask = create_block_mask(mask_mod, B, HQ, T, T, device=q.device, _compile=True)
    flex = torch.compile(flex_attention, dynamic=False)
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    return lambda: flex(qt, kt, vt, block_mask=mask, scale=scale, enable_gqa=True).transpose(1, 2)


def _warm_up(dtype, B, HQ, HK, D, s, n, scale):
    """Compile the kernels and wake the GPU clocks before the first timed length."""
    from ..ops import block_sparse_attention

    q = torch.randn(B, 8192, HQ, D, device="cuda", dtype=dtype, requires_grad=True)
    k = torch.randn(B, 8192, HK, D, device="cuda", dtype=dtype, requires_grad=True)
    v = torch.randn_like(k, requires_grad=True)
    for _ in range(20):
        block_sparse_attention(q, k, v, s, n, None, scale, backend="triton").sum().backward()
        sdpa_causal(q, k, v, scale).sum().backward()
    torch.cuda.synchronize()


def bench_attention(args) -> dict:
    from ..ops import block_sparse_attention, select_blocks

    dtype = getattr(torch, args.dtype)
    B, HQ, HK, D, s, n = args.batch, args.q_heads, args.kv_heads, args.head_dim, args.block_size, args.block_count
    scale = D ** -0.5
    env = environment()
    rows = []
    _warm_up(dtype, B, HQ, HK, D, s, n, scale)
    print(f"# {env}\n# B={B} HQ={HQ} HK={HK} D={D} s={s} n={n} {args.dtype}", flush=True)
    for T in (int(x) for x in args.seq_lens.split(",")):
        g = torch.Generator(device="cuda").manual_seed(T)
        q = torch.randn(B, T, HQ, D, device="cuda", dtype=dtype, generator=g)
        k = torch.randn(B, T, HK, D, device="cuda", dtype=dtype, generator=g)
        v = torch.randn(B, T, HK, D, device="cuda", dtype=dtype, generator=g)
        do = torch.randn_like(q)
        leaves = [x.requires_grad_() for x in (q, k, v)]
        row = {"T": T}
        variants = dense_variants(q, k, v, scale)  # outside no_grad: expanded K/V stay differentiable

        with torch.no_grad():
            row["select_ms"] = _median_ms(lambda: select_blocks(q, k, s, n, scale, backend="triton"), args.rep_ms)
            idx = select_blocks(q, k, s, n, scale, backend="triton")
            row["sparse_fwd_ms"] = _median_ms(
                lambda: block_sparse_attention(q, k, v, s, n, None, scale, backend="triton"), args.rep_ms)
            best, row["sdpa_fwd_ms"], row["dense_fwd_ms_by_variant"] = fastest_dense(
                variants, lambda fn: _median_ms(fn, args.rep_ms))
            row["dense_baseline"] = best
            dense = variants[best]
        row["fwd_speedup"] = row["sdpa_fwd_ms"] / row["sparse_fwd_ms"]
        if args.forward_only:
            rows.append(row)
            print(json.dumps(row), flush=True)
            del q, k, v, do, leaves, idx, variants, dense
            torch.cuda.empty_cache()
            continue
        o = block_sparse_attention(q, k, v, s, n, idx, scale, backend="triton")
        row["sparse_bwd_ms"] = _median_ms(lambda: o.backward(do, retain_graph=True), args.rep_ms, leaves)
        o = dense()  # the backward of the fastest forward variant
        row["sdpa_bwd_ms"] = _median_ms(lambda: o.backward(do, retain_graph=True), args.rep_ms, leaves)
        del o
        for x in leaves:
            x.grad = None

        def sparse_step():
            i = select_blocks(q, k, s, n, scale, backend="triton")
            block_sparse_attention(q, k, v, s, n, i, scale, backend="triton").backward(do)

        row["sparse_peak_mib"] = _peak_mib(sparse_step)
        for x in leaves:
            x.grad = None
        row["sdpa_peak_mib"] = _peak_mib(lambda: dense().backward(do))
        for x in leaves:
            x.grad = None
        row["index_mib"] = idx.numel() * 4 / 2**20
        if T <= args.flex_max_len:
            try:
                flex = _flex_runner(q, k, v, idx, s, scale)
                with torch.no_grad():
                    row["flex_fwd_ms"] = _median_ms(flex, args.rep_ms)
                # Compiled flex backward frees (donates) its buffers: time forward + backward afresh
                # each call and subtract the forward.
                both = _median_ms(lambda: flex().backward(do), args.rep_ms, leaves)
                row["flex_bwd_ms"] = both - row["flex_fwd_ms"]
                del flex
            except Exception as err:  # FlexAttention is a baseline only: record why it did not run
                row["flex_error"] = f"{type(err).__name__}: {str(err)[:200]}"
        row["bwd_speedup"] = row["sdpa_bwd_ms"] / row["sparse_bwd_ms"]
        rows.append(row)
        print(json.dumps(row), flush=True)
        del q, k, v, do, leaves, idx, variants, dense
        torch.cuda.empty_cache()

    if args.forward_only:
        print("\n| T | select ms | sparse fwd ms (incl. selection) | dense fwd ms | dense baseline | fwd x |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['T'] // 1024}k | {r['select_ms']:.3f} | {r['sparse_fwd_ms']:.3f} | {r['sdpa_fwd_ms']:.3f} "
                  f"| {r['dense_baseline']} | {r['fwd_speedup']:.2f} |")
        return {"env": env, "config": {k: v for k, v in vars(args).items() if not k.startswith("_")}, "rows": rows}
    print("\nDense baseline: the fastest of SDPA's default dispatch and each backend, GQA-native and with "
          "K/V expanded (named per row); its backward is that variant's backward.")
    print("\n| T | select ms | sparse fwd ms | dense fwd ms | dense baseline | fwd x | sparse bwd ms | dense bwd ms "
          "| bwd x | flex fwd / bwd ms | peak MiB sparse / dense (index) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        flex = f"{r['flex_fwd_ms']:.2f} / {r['flex_bwd_ms']:.2f}" if "flex_bwd_ms" in r else ("error" if "flex_error" in r else "-")
        print(f"| {r['T'] // 1024}k | {r['select_ms']:.3f} | {r['sparse_fwd_ms']:.3f} | {r['sdpa_fwd_ms']:.3f} "
              f"| {r['dense_baseline']} | {r['fwd_speedup']:.2f} | {r['sparse_bwd_ms']:.3f} | {r['sdpa_bwd_ms']:.3f} | {r['bwd_speedup']:.2f} "
              f"| {flex} | {r['sparse_peak_mib']:.0f} / {r['sdpa_peak_mib']:.0f} ({r['index_mib']:.1f}) |")
    return {"env": env, "config": {k: v for k, v in vars(args).items() if not k.startswith("_")}, "rows": rows}


# --------------------------------------------------------------------------------------- train step


def training_step(method: str, shape: dict, vocab_size: int, batch: int, seq_len: int, *,
                  compile: bool = False, activation_checkpointing: bool = False):
    """A CUDA model of `shape` for `method` and a closure running one training step as `ssa train`
    runs it on one GPU: bf16 autocast, the chunked loss, the trainer's AdamW (fused on CUDA) and
    gradient clipping, SSA's mode passed in per step, compile / activation checkpointing applied
    by the trainer's own helpers; on fixed random tokens. Returns (step, model)."""
    from ..model import SSAConfig, SSAForCausalLM
    from ..model.objective import scheduled_mode
    from ..training import distributed as dist
    from ..training.config import TrainSpec
    from ..training.optim import build_optimizer

    torch.manual_seed(0)
    cfg = SSAConfig(method=method, vocab_size=vocab_size, backend="auto", **shape)
    model = SSAForCausalLM(cfg).cuda().train()
    if activation_checkpointing:
        dist.apply_activation_checkpointing(model)
    if compile:
        dist.apply_compile(model)
    opt = build_optimizer(model, TrainSpec(lr=1e-4))
    ids = torch.randint(0, vocab_size, (batch, seq_len), device="cuda")
    count = [0]

    def step():
        mode = scheduled_mode(cfg.full_ratio, 0, count[0]) if method == "ssa" else None
        count[0] += 1
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(ids, labels=ids, attention_mode=mode)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, model


def preset_shape(preset: str, layers=None, full_ratio=None, seq_len: int = 0) -> dict:
    """The model part of a preset, with the bench's overrides."""
    from ..training.config import load_preset

    shape = dict(load_preset(preset)["model"])
    shape.pop("_comment", None)
    if layers is not None:
        shape["num_hidden_layers"] = layers
    if full_ratio is not None:
        shape["full_ratio"] = full_ratio
    shape["max_position_embeddings"] = max(shape.get("max_position_embeddings", 0), seq_len)
    return shape


def _train_run(method: str, shape: dict, args) -> dict:
    step, model = training_step(method, shape, args.vocab_size, args.batch, args.seq_len, compile=args.compile,
                                activation_checkpointing=args.activation_checkpointing)
    for _ in range(3):  # warm-up: compilation, allocator, optimizer state
        step()
    torch.cuda.synchronize()
    from ..training.flops import flops_per_token

    return {"step": step, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "flops_per_token": flops_per_token(model.config, args.seq_len, method),
            "windows": [], "synced": [], "step_peak_gib": 0.0}


def _time_window(run: dict, steps: int) -> None:
    """One window of `steps` unsynced steps, then 3 steps synced one by one."""
    torch.cuda.synchronize()
    resident = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        run["step"]()
    end.record()
    end.synchronize()
    run["windows"].append(start.elapsed_time(end) / steps)
    # Memory a step needs above what stays allocated between steps (weights, AdamW state, and the
    # other models of an interleaved run): activations, gradients, temporaries.
    run["step_peak_gib"] = max(run["step_peak_gib"], (torch.cuda.max_memory_allocated() - resident) / 2**30)
    # Everything allocated at the peak (weights, optimizer state, activations; other models too
    # unless --one-at-a-time): the figure to compare with a GPU's memory.
    run["peak_gib"] = max(run.get("peak_gib", 0.0), torch.cuda.max_memory_allocated() / 2**30)
    for _ in range(3):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        run["step"]()
        b.record()
        b.synchronize()
        run["synced"].append(a.elapsed_time(b))


def bench_train_step(args) -> dict:
    shape = preset_shape(args.preset, args.layers, args.full_ratio, args.seq_len)
    for item in args.set or []:  # --set model.KEY=VALUE, as `ssa train --set`
        from ..training.config import parse_override

        parts, value = parse_override(item)
        if parts[0] != "model" or len(parts) != 2:
            raise CommandError(f"bench train-step --set takes model.KEY=VALUE, got {item!r}")
        shape[parts[1]] = value
    from ..training.flops import peak_flops

    peak = peak_flops(torch.cuda.get_device_name(), args.peak_tflops)
    env = environment()
    print(f"# {env}\n# preset={args.preset} seq_len={args.seq_len} batch={args.batch} {shape}", flush=True)
    # By default all methods live side by side and their timing windows interleave, so drift of the
    # clocks or of the host hits every method alike (--one-at-a-time when they do not fit together).
    # A window is `steps` back-to-back steps with no host sync inside (as in training, where the host
    # queues ahead of the GPU); the figure is the median over windows of window time / steps.
    # `synced_step_ms` is the older per-step median with a sync after every step, which also counts
    # the host's launch latency at the start of each step.
    methods = args.methods.split(",")
    groups = [[m] for m in methods] if args.one_at_a_time else [methods]
    rows = []
    for group in groups:
        runs = {method: _train_run(method, shape, args) for method in group}
        for _ in range(args.windows):
            for run in runs.values():
                _time_window(run, args.steps)
        for method, run in runs.items():
            windows, synced = sorted(run["windows"]), sorted(run["synced"])
            tok_s = args.batch * args.seq_len / (windows[len(windows) // 2] / 1e3)
            row = {
                "tokens_per_s": tok_s,
                "mfu": tok_s * run["flops_per_token"] / peak if peak else None,
                "flops_per_token": run["flops_per_token"],
                "method": method,
                "step_ms": windows[len(windows) // 2],
                "min_ms": windows[0],
                "max_ms": windows[-1],
                "synced_step_ms": synced[len(synced) // 2],
                "step_peak_gib": run["step_peak_gib"],
                "peak_gib": run["peak_gib"],
                "params_m": run["params_m"],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        del runs
        torch.cuda.empty_cache()
    base = next((r["step_ms"] for r in rows if r["method"] == "full"), None)
    print(f"\n| method | step ms (median of {args.windows} windows x {args.steps} steps) | min-max | vs full "
          "| tokens/s | MFU | synced step ms | step peak GiB | params M |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['step_ms'] / base:.3f}" if base else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        print(f"| {r['method']} | {r['step_ms']:.1f} | {r['min_ms']:.1f}-{r['max_ms']:.1f} | {ratio} "
              f"| {r['tokens_per_s']:,.0f} | {mfu} | {r['synced_step_ms']:.1f} | {r['step_peak_gib']:.1f} "
              f"| {r['params_m']:.0f} |")
    return {"env": env, "config": {k: v for k, v in vars(args).items() if not k.startswith("_")}, "shape": shape,
            "rows": rows, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
