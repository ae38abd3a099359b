"""`ssa bench decode`: sparse vs dense decoding, per layer and end to end, all under CUDA graphs.

1. Attention per generated token, one layer (default: the 300M head layout HQ=16, HK=1, d=64,
   s=16, n=16, bf16), at each context and batch size (plus rows of different lengths at B > 1).
   Sparse: the model's static-cache step (`sparse_decode` bounded by the cache capacity: block
   scoring, exact top-k, attention over the selected blocks). Dense: every SDPA variant of
   `bench.dense_variants` (default dispatch and each backend, GQA-native and K/V expanded) and the
   model's own dense step (`full_decode` over the capacity under a length mask); the fastest is the
   baseline and is named. Each is captured as a CUDA graph and timed as replays.
2. Greedy decoding tokens/s of a model preset (default configs/300m.json, random weights, bf16)
   after a prompt of each context length, B=1 and B>1 (rows replicated from one prefill), dense and
   sparse with the same capture: `ssa.generation.GreedyStep` on a static cache.
"""

from __future__ import annotations

import json
import time

import torch


def add_arguments(sub) -> None:
    from .bench import add_shape_arguments

    d = sub.add_parser("decode", help="sparse vs dense decoding: per-layer attention and greedy tokens/s (CUDA graphs)")
    d.add_argument("--contexts", default="8192,32768,131072", help="per-layer attention: context lengths")
    d.add_argument("--batches", default="1,8", help="batch sizes (both parts)")
    add_shape_arguments(d, rep_ms=100)
    d.add_argument("--preset", default="300m", help="generate part: model shape preset (configs/NAME.json)")
    d.add_argument("--gen-contexts", default="32768,131072", help="generate part: prompt lengths ('' to skip)")
    d.add_argument("--new-tokens", type=int, default=32, help="generate part: timed decode steps per run")
    d.add_argument("--json", default=None)


def _us(fn, rep_ms: int, graph: bool = True) -> float:
    """Median microseconds of fn(), as CUDA-graph replays (graph=True) or eager calls."""
    from triton.testing import do_bench

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream: compilation, allocator
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    if not graph:
        return 1000 * do_bench(fn, warmup=10, rep=rep_ms, return_mode="median")
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return 1000 * do_bench(g.replay, warmup=10, rep=rep_ms, return_mode="median")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def bench_decode_attention(args) -> list[dict]:
    from ..ops.decode import full_decode, sparse_decode
    from ..ops.triton._decode import sparse_decode_triton
    from .bench import dense_variants, fastest_dense

    HQ, HK, D, S, N = args.q_heads, args.kv_heads, args.head_dim, args.block_size, args.block_count
    scale = D ** -0.5
    rows = []
    cases = [(L, B, False) for L in _ints(args.contexts) for B in _ints(args.batches)]
    cases += [(L, B, True) for L in _ints(args.contexts) for B in _ints(args.batches) if B > 1]
    for L, B, ragged in cases:
        g = torch.Generator(device="cuda").manual_seed(L + B)
        q = torch.randn(B, HQ, D, device="cuda", generator=g).bfloat16()
        k = torch.randn(B, L, HK, D, device="cuda", generator=g).bfloat16()
        v = torch.randn(B, L, HK, D, device="cuda", generator=g).bfloat16()
        kbar = k.float().view(B, L // S, S, HK, D).mean(2)
        lengths = torch.full((B,), L, device="cuda", dtype=torch.int32)
        mask = None
        if ragged:  # rows between L/2 and L tokens, the longest at L
            lengths = torch.randint(L // 2, L + 1, (B,), device="cuda", generator=g, dtype=torch.int32)
            lengths[0] = L
            mask = (torch.arange(L, device="cuda")[None] < lengths[:, None])[:, None, None, :]
        # The model's static-cache step: bounded by the capacity (L here), lengths read on device.
        sparse = lambda: sparse_decode(q, k, v, kbar, lengths, S, N, scale, backend="triton")  # noqa: E731
        variants = dense_variants(q[:, None], k, v, scale, causal=False, attn_mask=mask)
        variants["model-full_decode(masked capacity)"] = lambda: full_decode(q, k, v, lengths, scale)
        row = {"context": L, "batch": B, "ragged": ragged}
        ref, ridx = sparse_decode(q, k, v, kbar, lengths, S, N, scale, backend="torch", return_indices=True)
        out, idx = sparse_decode(q, k, v, kbar, lengths, S, N, scale, backend="triton", return_indices=True)
        row["selection_equal_reference"] = bool(torch.equal(idx, ridx))
        row["max_abs_err_vs_reference"] = float((out.float() - ref.float()).abs().max())
        row["sparse_graph_us"] = _us(sparse, args.rep_ms)
        row["sparse_eager_us"] = _us(sparse, args.rep_ms, graph=False)
        # The attention over the selected blocks in one program per (row, KV head), without the
        # flash-decoding split and its combine launch: which one wins at each shape.
        row["sparse_unsplit_graph_us"] = _us(
            lambda: sparse_decode_triton(q[:, None], k, v, kbar, lengths, S, N, scale, L, attention_splits=1), args.rep_ms)
        best, row["dense_graph_us"], row["dense_graph_us_by_variant"] = fastest_dense(
            variants, lambda fn: _us(fn, args.rep_ms))
        row["dense_baseline"] = best
        row["speedup"] = row["dense_graph_us"] / row["sparse_graph_us"]
        rows.append(row)
        print(json.dumps(row), flush=True)
        del q, k, v, kbar, variants
        torch.cuda.empty_cache()
    return rows


@torch.no_grad()
def bench_generate(args) -> tuple[list[dict], dict]:
    """Greedy tokens/s after each prompt length: one full-mode prefill at B=1 per length, its cache
    replicated to B rows, then for each mode a captured step timed over `new_tokens` replays (the
    cache is rewound between modes; positions past a row's length are never read)."""
    from ..generation import GreedyStep
    from ..model import SSAConfig, SSAForCausalLM
    from .bench import preset_shape

    contexts, batches, n = _ints(args.gen_contexts), _ints(args.batches), args.new_tokens
    if not contexts:
        return [], {}
    shape = preset_shape(args.preset, seq_len=max(contexts) + 2 * n + 8)
    torch.manual_seed(0)
    model = SSAForCausalLM(SSAConfig(method="ssa", vocab_size=50257, **shape)).to("cuda", torch.bfloat16).eval()
    rows = []
    for L in contexts:
        ids = torch.randint(1, 50257, (1, L), device="cuda")
        cache = model.new_cache(max_length=L + 2 * n + 8)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        first = model(ids, cache=cache, attention_mode="full", logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
        torch.cuda.synchronize()
        prefill_s = time.perf_counter() - t0
        for B in sorted(batches):
            if B != cache.batch_size:  # every row a copy of the prefilled one (in place)
                cache.reorder_cache(torch.zeros(B, dtype=torch.long, device="cuda"))
            rows_cache = cache
            for mode in ("full", "sparse"):  # rewind to the prompt (later slots are never read)
                rows_cache.host_lengths, rows_cache.seen_tokens = [L] * B, L
                rows_cache.lengths.fill_(L)
                step = GreedyStep(model, rows_cache, attention_mode=mode, capture=True)
                tok = first.expand(B, 1).contiguous()
                for _ in range(3):  # two eager warm-up steps, then the capture and its first replay
                    tok = step(tok)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(n):
                    tok = step(tok)
                torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                row = {"context": L, "batch": B, "mode": mode, "new_tokens": n, "ms_per_step": 1000 * dt / n,
                       "tokens_per_s": B * n / dt, "prefill_full_b1_s": prefill_s}
                rows.append(row)
                print(json.dumps(row), flush=True)
                del step
            torch.cuda.empty_cache()
        del cache
        torch.cuda.empty_cache()
    return rows, shape


def _eager_loop_check(args) -> list[dict]:
    """Where a plain eager cached loop loses time (dense mode, B=1, 32k):

    - op level: SDPA decode over exactly the cached keys, a new key length on every call (what the
      cache did before reads were bounded by its capacity), first call at each length vs a repeat;
    - model level: ms per eager one-token step on a growing and on a static cache."""
    from ..model import SSAConfig, SSAForCausalLM
    from ..model.modeling import CACHE_FIELD
    from ..ops.decode import full_decode
    from .bench import preset_shape

    L, n = 32768, 16
    rows = []
    HQ, HK, D = args.q_heads, args.kv_heads, args.head_dim
    q = torch.randn(1, HQ, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, L + n, HK, D, device="cuda", dtype=torch.bfloat16)
    first, again = [], []
    for j in range(n):
        lengths = torch.full((1,), L + j, device="cuda", dtype=torch.int32)
        for out in (first, again):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            full_decode(q, k, k, lengths, max_length=L + j)
            torch.cuda.synchronize()
            out.append(1000 * (time.perf_counter() - t0))
    rows.append({"what": "op: SDPA decode, new key length per call", "first_call_ms": sorted(first)[n // 2],
                 "repeat_call_ms": sorted(again)[n // 2]})
    print(json.dumps(rows[-1]), flush=True)
    del q, k

    shape = preset_shape(args.preset, seq_len=L + 64)
    torch.manual_seed(0)
    model = SSAForCausalLM(SSAConfig(method="ssa", vocab_size=50257, **shape)).to("cuda", torch.bfloat16).eval()
    ids = torch.randint(1, 50257, (1, L), device="cuda")
    with torch.no_grad():
        for kind in ("growing", "static"):
            cache = model.new_cache(max_length=L + 2 * n + 4 if kind == "static" else None)
            out = model(ids, cache=cache, attention_mode="full", logits_to_keep=1)
            cache = getattr(out, CACHE_FIELD)
            tok = out.logits[:, -1:].argmax(-1)
            times = []
            for _ in range(2 * n):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                tok = model(tok, cache=cache, attention_mode="full", logits_to_keep=1).logits[:, -1:].argmax(-1)
                torch.cuda.synchronize()
                times.append(1000 * (time.perf_counter() - t0))
            rows.append({"what": f"model: eager dense step, {kind} cache", "first_steps_ms": [round(t, 2) for t in times[:4]],
                         "median_ms": sorted(times[n:])[n // 2]})
            print(json.dumps(rows[-1]), flush=True)
            del cache
    del model
    torch.cuda.empty_cache()
    return rows


def run(args) -> dict:
    from .bench import environment

    env = environment()
    import transformers

    env["transformers"] = transformers.__version__
    print(f"# {env}", flush=True)
    attn = bench_decode_attention(args)
    gen, shape = bench_generate(args)
    loop = _eager_loop_check(args) if args.gen_contexts else []
    print(f"\n### Decode attention per token, one layer (HQ={args.q_heads} HK={args.kv_heads} d={args.head_dim} "
          f"s={args.block_size} n={args.block_count}, bf16), CUDA-graph replays, microseconds\n")
    print("| context | B | rows | sparse | dense (fastest) | dense baseline | sparse ÷ dense speed | sparse eager "
          "| sparse, unsplit attention | sel. = ref |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in attn:
        print(f"| {r['context'] // 1024}k | {r['batch']} | {'ragged' if r['ragged'] else 'equal'} | {r['sparse_graph_us']:.1f} "
              f"| {r['dense_graph_us']:.1f} | {r['dense_baseline']} | {r['speedup']:.2f}x | {r['sparse_eager_us']:.1f} "
              f"| {r['sparse_unsplit_graph_us']:.1f} | {r['selection_equal_reference']} |")
    if gen:
        print(f"\n### Greedy decoding, preset {args.preset} {shape}, bf16, captured one-token step\n")
        print("| context | B | dense tok/s | sparse tok/s | sparse ÷ dense | dense ms/step | sparse ms/step |")
        print("|---|---|---|---|---|---|---|")
        by = {(r["context"], r["batch"], r["mode"]): r for r in gen}
        for L in _ints(args.gen_contexts):
            for B in sorted(_ints(args.batches)):
                f, s = by[(L, B, "full")], by[(L, B, "sparse")]
                print(f"| {L // 1024}k | {B} | {f['tokens_per_s']:.0f} | {s['tokens_per_s']:.0f} "
                      f"| {s['tokens_per_s'] / f['tokens_per_s']:.2f}x | {f['ms_per_step']:.2f} | {s['ms_per_step']:.2f} |")
    return {"env": env, "config": {k: v for k, v in vars(args).items() if not k.startswith("_")},
            "attention": attn, "generate": gen, "generate_shape": shape, "eager_loop": loop}
