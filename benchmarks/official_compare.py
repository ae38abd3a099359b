"""Converted checkpoints against the released modeling code, on random official-layout checkpoints.

For each method (ssa, full, moba, nsa) this writes a random checkpoint in the released layout
(their parameter names and shapes, their config keys), converts it with `ssa convert --from-official`,
and runs the same token ids through both models:

- full mode: the converted model vs their SSA model with inference_mode "full" and their FullAttn
  model (MoBA and NSA have no full-attention path in the released code);
- sparse mode: the converted model vs their SSA (inference_mode "sparse"), MoBA and NSA models.
  Sparse outputs differ by design where the selected sets differ (docs/conversion.md), so the
  selected sets are compared too, against both our selection and the released normalisation
  (benchmarks/selection_rule.py), and the converted model is also run with the released rule.

Their code runs in a child process from a scratch copy that is not part of this repository:
`--official-dir` holds `src/` (their modeling and config files, one package per method, their
modified native_sparse_attention ops) and `--site` the packages it was written against
(transformers 4.54, liger-kernel 0.6.2, fla-core 0.4.0). No file of theirs is imported by this
process.

    python benchmarks/official_compare.py --official-dir .scratch/official --site SITE --out results_dir
"""

from __future__ import annotations

import time

T0 = time.time()  # the time budget counts the imports too

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

METHODS = ("ssa", "full", "moba", "nsa")
# Sizes their kernels accept: a GQA group of 16 query heads, head dim 64, block_counts <= block_size.
SHAPE = dict(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=16,
             num_key_value_heads=1, head_dim=64, block_size=16, block_counts=4, window_size=32)


def official_config(method: str) -> dict:
    cfg = {
        "architectures": ["LlamaNSAForCausalLM"], "model_type": "llama-nsa", "attention_bias": False,
        "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
        "initializer_range": 0.02, "max_position_embeddings": 4096, "mlp_bias": False, "pretraining_tp": 1,
        "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 500000.0, "tie_word_embeddings": True,
        "torch_dtype": "float32", "use_cache": True, **SHAPE,
    }
    if method != "nsa":
        cfg["window_size"] = 0
    if method == "ssa":
        cfg["inference_mode"] = "sparse"
    return cfg


def official_weights(cfg: dict, seed: int) -> dict:
    """Random weights under their names and shapes (g_proj: [3 * heads, hidden], read as [..., heads, 3])."""
    g = torch.Generator().manual_seed(seed)
    d, H, HK, hd, inter = (cfg[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                                            "intermediate_size"))
    shapes = {"self_attn.q_proj": (H * hd, d), "self_attn.k_proj": (HK * hd, d), "self_attn.v_proj": (HK * hd, d),
              "self_attn.o_proj": (d, H * hd), "self_attn.g_proj": (3 * H, d), "mlp.gate_proj": (inter, d),
              "mlp.up_proj": (inter, d), "mlp.down_proj": (d, inter)}
    w = {"model.embed_tokens.weight": torch.randn(cfg["vocab_size"], d, generator=g) / d ** 0.5,  # logits ~ 1
         "model.norm.weight": 1 + 0.1 * torch.randn(d, generator=g)}
    for i in range(cfg["num_hidden_layers"]):
        for name, shape in shapes.items():
            w[f"model.layers.{i}.{name}.weight"] = torch.randn(*shape, generator=g) / shape[1] ** 0.5
        for norm in ("input_layernorm", "post_attention_layernorm"):
            w[f"model.layers.{i}.{norm}.weight"] = 1 + 0.1 * torch.randn(d, generator=g)
    return w


def write_checkpoints(work: Path) -> None:
    from safetensors.torch import save_file

    from ssa.cli import main as ssa_main

    for seed, method in enumerate(METHODS):
        src, cfg = work / f"official-{method}", official_config(method)
        src.mkdir(parents=True, exist_ok=True)
        (src / "config.json").write_text(json.dumps(cfg, indent=1))
        save_file(official_weights(cfg, seed), str(src / "model.safetensors"), metadata={"format": "pt"})
        rc = ssa_main(["convert", "--from-official", str(src), "--method", method, "--out", str(work / f"ssa-{method}"),
                       "--overwrite"])
        assert rc == 0, f"conversion of {method} failed"


# ---------------------------------------------------------------- the child: their code only

def run_official(work: Path, device: str) -> None:
    """Their models on the saved ids; saves logits and, per layer, q, k and their selected blocks."""
    ids = torch.load(work / "ids.pt").to(device)
    runs = RUNS if device == "cuda" else RUNS[:2]  # their sparse ops (fla) need a GPU
    out = {}
    for method, mode in runs:
        # Liger's Triton kernels do not run under the CPU interpreter; on the GPU they are used, and
        # only a run that fails with them is repeated with transformers' Llama RMSNorm / MLP.
        for stand_ins in ((True,) if device == "cpu" else (False, True)):
            try:
                out[f"{method}/{mode}"] = dict(_official_run(work, method, mode, ids, stand_ins), liger_stand_ins=stand_ins)
                break
            except Exception as err:  # one failing run must not hide the others
                failure = out.get(f"{method}/{mode}", {}).get("error", "")
                out[f"{method}/{mode}"] = {"error": (failure + f" | {type(err).__name__}: {err}")[:800]}
        torch.save(out, work / "official_outputs.pt")  # after every run: a time limit keeps what is done


def _official_run(work: Path, method: str, mode: str, ids, stand_ins: bool) -> dict:
    import importlib

    modeling = importlib.import_module(f"official_{method}.modeling_llama_nsa")
    config_mod = importlib.import_module(f"official_{method}.configuration_llama_nsa")
    liger = modeling.LigerRMSNorm, modeling.LigerSwiGLUMLP
    if stand_ins:
        from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

        modeling.LigerRMSNorm, modeling.LigerSwiGLUMLP = LlamaRMSNorm, LlamaMLP
    captured, original = [], modeling.parallel_nsa

    def capture(q, k, v, *args, **kwargs):
        o, indices = original(q, k, v, *args, **kwargs)
        captured.append({"q": q.float().cpu(), "k": k.float().cpu(), "indices": indices.cpu()})
        return o, indices

    modeling.parallel_nsa = capture
    try:
        cfg = config_mod.LlamaNSAConfig.from_pretrained(work / f"official-{method}")
        cfg.inference_mode = mode
        model = modeling.LlamaNSAForCausalLM.from_pretrained(
            work / f"official-{method}", config=cfg, torch_dtype=torch.float32, attn_implementation="sdpa",
        ).to(ids.device).eval()
        with torch.no_grad():
            logits = model(input_ids=ids).logits.float().cpu()
    finally:
        modeling.parallel_nsa = original
        modeling.LigerRMSNorm, modeling.LigerSwiGLUMLP = liger
    return {"logits": logits, "layers": captured}


# ---------------------------------------------------------------- the parent: compare

RUNS = [("ssa", "full"), ("full", "full"), ("ssa", "sparse"), ("moba", "sparse"), ("nsa", "sparse")]


def our_outputs(work: Path, ids, device: str, mode: str) -> dict:
    """Logits of the converted models in one mode (sparse: also with the released normalisation)."""
    from selection_rule import sparse_logits_with_rule

    from ssa.model import SSAForCausalLM

    out = {}
    for method, run_mode in RUNS:
        if run_mode != mode:
            continue
        model = SSAForCausalLM.from_pretrained(work / f"ssa-{method}").to(device).eval()
        with torch.no_grad():
            out[f"{method}/{mode}"] = {"logits": model(ids, attention_mode=mode).logits.float().cpu()}
        if mode == "sparse":
            out[f"{method}/{mode}"]["released_rule"] = sparse_logits_with_rule(model, ids, "released").cpu()
    return out


def compare(theirs: dict, ours: dict, device: str) -> dict:
    from selection_rule import rows_that_differ, select_blocks_released_rule

    from ssa import ops

    s, n = SHAPE["block_size"], SHAPE["block_counts"]
    results = {}
    for key, ref in theirs.items():
        if "error" in ref:
            results[key] = {"official_error": ref["error"]}
            continue
        if key not in ours:
            continue
        mine = ours[key]["logits"]
        row = {"liger_stand_ins": ref["liger_stand_ins"]}
        row.update(max_abs_logit_diff=(mine - ref["logits"]).abs().max().item(),
                   logit_scale=ref["logits"].abs().max().item())
        if "released_rule" in ours[key]:
            released = ours[key]["released_rule"]
            row["max_abs_logit_diff_with_released_rule"] = (released - ref["logits"]).abs().max().item()
            row["released_rule_effect_on_our_logits"] = (released - mine).abs().max().item()
        if ref["layers"]:
            ours_vs, rule_vs = [], []
            for layer in ref["layers"]:
                q, k = layer["q"].to(device), layer["k"].to(device)
                their_sets = layer["indices"][..., :n].to(device)  # [B, T, HK, next_pow2(n)], best first
                ours_vs.append(rows_that_differ(ops.select_blocks(q, k, s, n, q.shape[-1] ** -0.5), their_sets))
                rule_vs.append(rows_that_differ(select_blocks_released_rule(q, k, s, n), their_sets))
            row["selected_sets_differ_from_ours"] = max(ours_vs)
            row["selected_sets_differ_from_released_rule"] = max(rule_vs)
        results[key] = row
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-dir", type=Path, default=Path(".scratch/official"))
    parser.add_argument("--site", type=Path, required=True, help="where the packages their code imports are installed")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder for the checkpoints (default: out/work)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole run; the released code's runs stop in time to compare what they did")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = args.work or args.out / "work"
    if args.child:
        return run_official(work, device)

    args.out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    t0 = T0
    write_checkpoints(work)
    ids = torch.randint(0, SHAPE["vocab_size"], (2, args.seq), generator=torch.Generator().manual_seed(7))
    torch.save(ids, work / "ids.pt")
    sys.path.insert(0, str(Path(__file__).parent))
    # Full mode needs none of our kernels: its outputs come first, the sparse ones after their run,
    # and the results file is written after each stage, so a time limit keeps what is done.
    ours = our_outputs(work, ids.to(device), device, "full")
    # Their process sees their code and the packages it was written against, and not ours.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(args.site), str(args.official_dir / "src")]))
    command = [sys.executable, __file__, "--child", "--site", str(args.site), "--out", str(args.out), "--work", str(work)]
    # Leave time for our sparse runs (their kernels compile on first use) and the comparison.
    child_timeout = None if args.budget is None else max(1.0, args.budget - (time.time() - t0) - 15)
    try:
        child = subprocess.run(command, env=env, capture_output=True, text=True, timeout=child_timeout)
        log, status = child.stdout + child.stderr, f"exit {child.returncode}"
    except subprocess.TimeoutExpired as err:  # compare the runs it finished
        log = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "") for x in (err.stdout, err.stderr))
        status = f"stopped after {child_timeout:.0f} s"
    (args.out / "official_child.log").write_text(log)
    if not (work / "official_outputs.pt").is_file():
        print(log[-3000:], file=sys.stderr)
        raise SystemExit(f"the official model run produced nothing ({status}); see official_child.log")
    theirs = torch.load(work / "official_outputs.pt")
    results = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "dtype": "float32",
               "shape": dict(SHAPE, seq=args.seq, batch=2), "official_process": status}
    write_results(args.out, results, compare(theirs, ours, device), t0)
    ours.update(our_outputs(work, ids.to(device), device, "sparse"))
    results["released_rule_effect"] = {  # what the released normalisation alone changes in our sparse logits
        key: {"max_abs_logit_change": (o["released_rule"] - o["logits"]).abs().max().item(),
              "mean_abs_logit_change": (o["released_rule"] - o["logits"]).abs().mean().item()}
        for key, o in ours.items() if "released_rule" in o}
    write_results(args.out, results, compare(theirs, ours, device), t0)


def write_results(out: Path, results: dict, runs: dict, t0: float) -> None:
    results.update(runs=runs, seconds=round(time.time() - t0, 1))
    (out / "official_compare.json").write_text(json.dumps(results, indent=2))
    columns = [("max_abs_logit_diff", "max |dlogit|", ".3g"), ("max_abs_logit_diff_with_released_rule", "w/ released rule", ".3g"),
               ("released_rule_effect_on_our_logits", "rule effect", ".3g"),
               ("selected_sets_differ_from_ours", "sets != ours", ".4f"),
               ("selected_sets_differ_from_released_rule", "sets != rule", ".4f")]
    print(f"{'run':<13}" + "".join(f"{title:>18}" for _, title, _ in columns))
    for key, row in runs.items():
        if "official_error" in row:
            print(f"{key:<13}  official run failed: {row['official_error'][:100]}")
            continue
        print(f"{key:<13}" + "".join(f"{format(row[name], spec) if name in row else '-':>18}" for name, _, spec in columns))


if __name__ == "__main__":
    main()
