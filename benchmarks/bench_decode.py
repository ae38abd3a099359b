"""Decode benchmark: sparse decode attention (Triton) vs SDPA on the full cache, and end-to-end generate.

1. Attention per generated token, one layer, the 300M head layout (HQ=16, HK=1, d=64, s=16, n=16,
   bf16) at 8k / 32k / 128k context, B=1 and B=8 (plus B=8 with rows of different lengths).
   Sparse = the whole step: block scoring over the cached means, exact top-k, attention over the
   selected blocks. Full = torch SDPA over the whole cache with native GQA, called directly and
   through `ssa.ops.decode.full_decode` (the model's full-mode path); the faster is the baseline.
   Timed eagerly (median of triton.testing.do_bench) and as CUDA-graph replays (GPU time only).
2. End-to-end `model.generate` tokens/s, sparse vs full, 300M shape (configs/300m.json), bf16, after a
   full-mode prefill of the prompt (the cache does not depend on the mode), B=1 and B=8.

    python benchmarks/bench_decode.py --out results_dir
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HQ, HK, D, S, N = 16, 1, 64, 16, 16
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def versions() -> dict:
    import triton
    import transformers

    return {"device": torch.cuda.get_device_name() if DEVICE == "cuda" else platform.processor(), "torch": torch.__version__, "triton": triton.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def bench(fn, graph: bool) -> float:
    """Median microseconds of fn(); with graph=True, of a CUDA-graph replay of it."""
    from triton.testing import do_bench

    fn()
    torch.cuda.synchronize()
    if not graph:
        return 1000 * do_bench(fn, warmup=25, rep=200, return_mode="median")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return 1000 * do_bench(g.replay, warmup=25, rep=200, return_mode="median")


def decode_inputs(B, L, ragged, seed=0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    q = torch.randn(B, HQ, D, device=DEVICE, generator=g).bfloat16()
    k = torch.randn(B, L, HK, D, device=DEVICE, generator=g).bfloat16()
    v = torch.randn(B, L, HK, D, device=DEVICE, generator=g).bfloat16()
    kbar = k.float().view(B, L // S, S, HK, D).mean(2)
    if ragged:  # rows between L/2 and L tokens
        lengths = torch.randint(L // 2, L + 1, (B,), device=DEVICE, generator=g)
        lengths[0] = L
    else:
        lengths = torch.full((B,), L, device=DEVICE)
    return q, k, v, kbar, lengths


def attention_bench(contexts, batches) -> list[dict]:
    from ssa.ops.decode import full_decode, sparse_decode
    from ssa.ops.triton._decode import sparse_decode_triton

    scale = D ** -0.5
    rows = []
    cases = [(L, B, False) for L in contexts for B in batches] + [(L, 8, True) for L in contexts if 8 in batches]
    for L, B, ragged in cases:
        q, k, v, kbar, lengths = decode_inputs(B, L, ragged)
        q4, k4, v4 = q[:, :, None], k.transpose(1, 2), v.transpose(1, 2)
        mask = None
        if ragged:
            mask = (torch.arange(L, device=DEVICE)[None] < lengths[:, None])[:, None, None, :]

        def sdpa_gqa():
            return F.scaled_dot_product_attention(q4, k4, v4, attn_mask=mask, scale=scale, enable_gqa=True)

        fns = {
            "sparse_kernel": lambda: sparse_decode_triton(q, k, v, kbar, lengths, S, N, scale, L),
            "sparse_op": lambda: sparse_decode(q, k, v, kbar, lengths, S, N, scale, backend="triton", max_length=L),
            "sdpa_gqa": sdpa_gqa,
            "model_full_decode": lambda: full_decode(q, k, v, lengths, scale, max_length=L),
        }
        # correctness at the benchmark shape: kernel vs the float32 reference
        ref, ridx = sparse_decode(q, k, v, kbar, lengths, S, N, scale, backend="torch", return_indices=True)
        out, idx = sparse_decode(q, k, v, kbar, lengths, S, N, scale, backend="triton", return_indices=True)
        row = {"context": L, "batch": B, "ragged": ragged,
               "max_abs_err_vs_reference": float((out.float() - ref.float()).abs().max()),
               "selection_equal": bool(torch.equal(idx, ridx))}
        for name, fn in fns.items():
            row[f"{name}_us"] = bench(fn, graph=False)
            row[f"{name}_graph_us"] = bench(fn, graph=True)
        for suffix in ("_us", "_graph_us"):
            full = min(row["sdpa_gqa" + suffix], row["model_full_decode" + suffix])
            row["speedup" + suffix] = full / row["sparse_kernel" + suffix]
        rows.append(row)
        print(json.dumps(row), flush=True)
        del q, k, v, kbar, q4, k4, v4
        torch.cuda.empty_cache()
    return rows


@torch.no_grad()
def model_check() -> list[dict]:
    """Token-by-token cached decoding through the Triton kernel vs the reference forward (fp32, GPU)."""
    from ssa.model import SSAConfig, SSAForCausalLM

    rows = []
    for method in ("ssa", "nsa"):
        torch.manual_seed(0)
        config = SSAConfig(method=method, vocab_size=256, hidden_size=128, num_hidden_layers=2, num_attention_heads=8,
                           num_key_value_heads=2, block_size=4, block_count=3, nsa_window=8, initializer_range=0.1)
        model = SSAForCausalLM(config).to(DEVICE).eval()
        ids = torch.randint(0, 256, (3, 150), device=DEVICE)
        model.config.backend = "torch"
        ref = model(ids, attention_mode="sparse").logits
        out = model(ids[:, :37], use_cache=True, attention_mode="sparse")  # reference prefill
        steps = [out.logits]
        model.config.backend = "auto"  # decode steps: the Triton decode kernel on CUDA
        for t in range(37, 150):
            out = model(ids[:, t:t + 1], past_key_values=out.past_key_values, attention_mode="sparse")
            steps.append(out.logits)
        err = float((torch.cat(steps, 1) - ref).abs().max())
        rows.append({"method": method, "max_abs_logit_diff_cached_vs_full": err})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def model_300m(tiny=False):
    from ssa.model import SSAConfig, SSAForCausalLM

    if tiny:  # CPU smoke test of this script
        shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1)
        return SSAForCausalLM(SSAConfig(method="ssa", vocab_size=50257, **shape)).to(DEVICE).eval(), shape

    preset = Path(__file__).resolve().parents[1] / "configs" / "300m.json"
    shape = {k: v for k, v in json.loads(preset.read_text())["model"].items()
             if k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                      "num_key_value_heads", "head_dim", "rope_theta", "tie_word_embeddings",
                      "block_size", "block_count")} if preset.is_file() else dict(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=12, num_attention_heads=16,
        num_key_value_heads=1, head_dim=64)
    config = SSAConfig(method="ssa", vocab_size=50257, max_position_embeddings=131072 + 1024, **shape)
    torch.manual_seed(0)
    return SSAForCausalLM(config).to(DEVICE, torch.bfloat16).eval(), shape


@torch.no_grad()
def generate_bench(contexts, batches, new_tokens, tiny=False) -> list[dict]:
    """Greedy decoding after the prompt; larger batches show where attention dominates the step."""
    model, shape = model_300m(tiny)
    rows = []
    for L in contexts:
        ids = torch.randint(1, 50257, (1, L), device=DEVICE)
        sync()
        t0 = time.perf_counter()
        base = model(ids[:, :-1], use_cache=True, attention_mode="full", logits_to_keep=1).past_key_values
        sync()
        prefill_s = time.perf_counter() - t0
        for B in batches:
            for mode in ("full", "sparse"):
                def run(n, use_generate=True):
                    cache = copy.deepcopy(base).reorder_cache(torch.zeros(B, dtype=torch.long, device=DEVICE))
                    sync()
                    t = time.perf_counter()
                    if use_generate:
                        out = model.generate(ids.expand(B, -1), attention_mask=torch.ones(B, L, dtype=torch.long, device=DEVICE),
                                             past_key_values=cache, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                             attention_mode=mode, pad_token_id=0)
                        assert out.shape[1] == L + n
                    else:  # the same greedy loop without generate's bookkeeping
                        tok = ids[:, -1:].expand(B, 1)
                        for _ in range(n):
                            logits = model(tok, past_key_values=cache, attention_mode=mode).logits
                            tok = logits[:, -1].argmax(-1, keepdim=True)
                    sync()
                    return time.perf_counter() - t

                run(4, use_generate=False)  # warm-up: kernel compilation for this length
                dt_loop = run(new_tokens, use_generate=False)
                try:
                    run(2)
                    dt, error = run(new_tokens), None
                except Exception as err:  # keep the loop numbers if this transformers version balks
                    dt, error = float("nan"), f"{type(err).__name__}: {err}"[:300]
                row = {"context": L, "batch": B, "mode": mode, "new_tokens": new_tokens, "generate_error": error,
                       "loop_ms_per_step": 1000 * dt_loop / new_tokens,
                       "ms_per_step": 1000 * dt / new_tokens, "tokens_per_s": B * new_tokens / dt,
                       "prefill_full_s_b1": prefill_s}
                rows.append(row)
                print(json.dumps(row), flush=True)
                torch.cuda.empty_cache()
        del base
        torch.cuda.empty_cache()
    return rows, shape


def markdown(info, attn, gen, shape) -> str:
    lines = [f"device: {info['device']}; torch {info['torch']}, triton {info['triton']}, "
             f"transformers {info['transformers']}", "",
             "### Decode attention per token (one layer, HQ=16 HK=1 d=64 s=16 n=16, bf16), microseconds", "",
             "| context | B | rows | sparse kernel | SDPA full (best) | speedup | graph: sparse | graph: full | graph speedup | sel. equal | max err |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in attn:
        full = min(r["sdpa_gqa_us"], r["model_full_decode_us"])
        gfull = min(r["sdpa_gqa_graph_us"], r["model_full_decode_graph_us"])
        lines.append(f"| {r['context']} | {r['batch']} | {'ragged' if r['ragged'] else 'equal'} | {r['sparse_kernel_us']:.1f} | "
                     f"{full:.1f} | {r['speedup_us']:.1f}x | {r['sparse_kernel_graph_us']:.1f} | {gfull:.1f} | "
                     f"{r['speedup_graph_us']:.1f}x | {r['selection_equal']} | {r['max_abs_err_vs_reference']:.1e} |")
    lines += ["", f"### End-to-end generate (300M shape {shape}, vocab 50257, bf16)", "",
              "| context | B | mode | generate ms / step | generate tokens/s | plain cached loop ms / step |",
              "|---|---|---|---|---|---|"]
    for r in gen:
        lines.append(f"| {r['context']} | {r['batch']} | {r['mode']} | {r['ms_per_step']:.2f} | {r['tokens_per_s']:.1f} | "
                     f"{r['loop_ms_per_step']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="decode_bench")
    p.add_argument("--contexts", type=int, nargs="+", default=[8192, 32768, 131072])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--e2e-contexts", type=int, nargs="+", default=[32768, 131072])
    p.add_argument("--e2e-tokens", type=int, default=32)
    p.add_argument("--e2e-batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny model, no attention kernels")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = versions()
    print(json.dumps(info), flush=True)
    check = [] if args.tiny else model_check()
    attn = [] if args.tiny else attention_bench(args.contexts, args.batches)
    gen, shape = generate_bench(args.e2e_contexts, args.e2e_batches, args.e2e_tokens, args.tiny) if args.e2e_contexts else ([], {})
    (out / "decode_bench.json").write_text(json.dumps({"info": info, "model_check": check, "attention": attn,
                                                       "generate": gen}, indent=1))
    md = markdown(info, attn, gen, shape)
    (out / "decode_bench.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
