"""Compiled blocks over packed documents on one GPU: the varlen kernel with the row length as its
bound against the exact longest document (outputs, gradients, time), and compiled training steps of
a small model over batches with different document counts (graphs compiled, step times).
Writes JSON to argv[1]; `--steps-only` as argv[2] skips the varlen-bound part.
The compiled steps also record the eager model's loss on the same batch (`loss_diff`, max |diff|)."""

import copy
import json
import sys
import time

import torch
from torch._dynamo.utils import counters

from ssa import ops
from ssa.model import SSAConfig, SSAForCausalLM
from ssa.ops import dense
from ssa.training.distributed import apply_compile

out = {}
dev = "cuda"
g = torch.Generator(device="cpu").manual_seed(0)


def packed_cu(B, T, docs_per_row):
    cuts = [0]
    for r in range(B):
        inner = sorted(torch.randperm(T - 1, generator=g)[:docs_per_row - 1].add(1).tolist())
        cuts += [r * T + c for c in inner] + [(r + 1) * T]
    return torch.tensor(cuts, dtype=torch.int32, device=dev)


def timed(fn, reps=20):
    fn(); torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps * 1e3


if sys.argv[2:] != ["--steps-only"]:
    # 1. varlen bound: max_seqlen=T vs the longest document
    B, T, HQ, HK, D = 16, 2048, 8, 2, 64
    rows = []
    for docs in (1, 4, 16):
        cu = packed_cu(B, T, docs)
        q = torch.randn(1, B * T, HQ, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(1, B * T, HK, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(1, B * T, HK, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
        res = {}
        for name, bound in (("longest", None), ("row", T)):
            o = ops.full_attention(q, k, v, cu_seqlens=cu, max_seqlen=bound)
            o.float().square().sum().backward()
            res[name] = (o.detach().float(), q.grad.float().clone(), k.grad.float().clone())
            q.grad = k.grad = v.grad = None
            res[name + "_ms"] = timed(lambda: ops.full_attention(q, k, v, cu_seqlens=cu, max_seqlen=bound).sum().backward())
            q.grad = k.grad = v.grad = None  # the timed backward calls accumulate into .grad
        diff = [float((a - b).abs().max()) for a, b in zip(res["longest"], res["row"])]
        rows.append(dict(docs_per_row=docs, longest=dense.longest_document(cu), max_abs_diff_o_dq_dk=diff,
                         ms_fwd_bwd_longest=res["longest_ms"], ms_fwd_bwd_row=res["row_ms"]))
    out["varlen_bound"] = rows


# 2. compiled training steps over batches with 2..12 documents per row
B, T = 8, 1024
steps = {}
for method, mode in (("full", None), ("ssa", "sparse"), ("ssa", "full"), ("moba", None), ("nsa", None)):
    torch._dynamo.reset(); counters.clear()
    torch.manual_seed(0)
    m = SSAForCausalLM(SSAConfig(method=method, vocab_size=50257, hidden_size=512, num_hidden_layers=4,
                                 num_attention_heads=8, num_key_value_heads=2, block_size=64, block_count=8,
                                 pad_vocab_multiple=64)).to(dev).train()
    eager = copy.deepcopy(m)
    apply_compile(m, "inductor")  # as train.compile does (the Triton module is imported before tracing)
    times, graphs, diffs = [], [], []
    for i, docs in enumerate((2, 5, 3, 9, 12, 4, 7, 2)):
        ids = torch.randint(0, 50257, (B, T), device=dev)
        pos = torch.arange(T, device=dev).repeat(B, 1)
        for r in range(B):
            for c in sorted(torch.randperm(T - 1, generator=g)[:docs - 1].add(1).tolist()):
                pos[r, c:] = torch.arange(T - c, device=dev)
        torch.cuda.synchronize(); t = time.perf_counter()
        try:
            with torch.autocast("cuda", torch.bfloat16):
                loss = m(ids, labels=ids, attention_mode=mode, position_ids=pos).loss
            loss.backward()
            torch.cuda.synchronize()
        except Exception as e:  # record and go on with the next method
            steps[f"{method}-{mode}"] = {"error": repr(e)[:400]}
            break
        times.append(round((time.perf_counter() - t) * 1e3, 1))
        graphs.append(counters["stats"]["unique_graphs"])
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
            ref = eager(ids, labels=ids, attention_mode=mode, position_ids=pos).loss
        diffs.append(abs(float(loss) - float(ref)))
    else:
        steps[f"{method}-{mode}"] = {"step_ms": times, "graphs_after_step": graphs,
                                     "graph_breaks": sum(counters["graph_break"].values()),
                                     "break_reasons": {k[:300]: v for k, v in counters["graph_break"].items()},
                                     "loss_diff": max(diffs)}
out["compiled_steps"] = steps
json.dump(out, open(sys.argv[1], "w"), indent=1)
print(json.dumps(out, indent=1))
