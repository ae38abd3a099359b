"""`ssa eval` end to end on tiny untrained runs, and attention statistics through the model."""

import json

import pytest
import torch
from test_eval_common import tiny_runs  # noqa: F401  (fixture)

from ssa.cli import main


def test_eval_all_sections_write_json(tiny_runs, tmp_path, capsys):  # noqa: F811
    run = tiny_runs["ssa"]
    # A two-item task file of piqa's layout, so the test needs no data folder.
    items = [{"query": "Question: how do I dry a cup?\nAnswer:", "choices": ["wipe it", "wet it"], "gold": 0},
             {"query": "Question: how do I cool tea?\nAnswer:", "choices": ["boil it", "wait"], "gold": 1}]
    (tmp_path / "piqa.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    rc = main(["eval", str(run), "--perplexity", "--attention", "--extrapolation", "--retrieval",
               "--commonsense", "piqa", "--tasks-dir", str(tmp_path), "--limit", "2",
               "--lengths", "1,2", "--block-counts", "1,2,8", "--seq-len", "64", "--no-progress", "--long-data", str(run / "val.txt"), "--depths", "0,1",
               "--retrieval-lengths", "200"])
    assert rc == 0
    out = capsys.readouterr().out
    for kind in ("perplexity", "attention", "extrapolation", "retrieval", "commonsense"):
        doc = json.loads((run / "eval" / f"{kind}.json").read_text())
        assert doc["kind"] == kind and doc["meta"]["method"] == "ssa"
        assert f"== {kind} ==" in out
    ppl = json.loads((run / "eval" / "perplexity.json").read_text())["results"]
    assert [(r["mode"], r["block_count"]) for r in ppl] == [("full", None), ("sparse", 1), ("sparse", 2), ("sparse", 8)]
    ext = json.loads((run / "eval" / "extrapolation.json").read_text())["results"]
    # Every (rope, length, mode) scores the same tokens; llama3 at 1x is the unscaled model.
    assert len({r["tokens"] for r in ext}) == 1
    key = {(r["rope"], r["multiple"], r["mode"]): r for r in ext}
    assert key[("llama3", 1.0, "full")]["nll"] == key[("none", 1.0, "full")]["nll"]
    assert key[("llama3", 2.0, "full")]["nll"] != key[("none", 2.0, "full")]["nll"]
    # The printed table shows the 1x rows once (under "none"), not again as llama3 copies.
    printed = out.split("== extrapolation ==")[1].split("== retrieval ==")[0]
    rows = [(w[0], float(w[1]), w[3]) for w in map(str.split, printed.splitlines()) if w and w[0] in ("none", "llama3")]
    assert sorted(rows) == sorted((rope, m, mode) for rope, m in (("none", 1.0), ("none", 2.0), ("llama3", 2.0))
                                  for mode in ("full", "sparse"))
    att = json.loads((run / "eval" / "attention.json").read_text())["modes"]
    assert set(att) == {"full", "sparse"} and len(att["full"]["layers"]) == 2


def test_extrapolation_on_held_out_stream_with_tag(tiny_runs, tmp_path):  # noqa: F811
    run = tiny_runs["moba"]
    assert main(["eval", str(run), "--extrapolation", "--long-data", "val", "--tag", "val", "--lengths", "1,2",
                 "--doc-tokens", "200", "--limit", "2", "--rope", "none", "--no-progress"]) == 0
    doc = json.loads((run / "eval" / "extrapolation-val.json").read_text())
    assert doc["tag"] == "val" and doc["settings"]["documents"] == 2 and doc["settings"]["data"] == "val"
    assert {r["tokens"] for r in doc["results"]} == {2 * 199}
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    assert "data: `val`" in (tmp_path / "rep" / "report.md").read_text()
    assert (tmp_path / "rep" / "ppl_vs_length-val.png").is_file()
    assert main(["eval", str(run), "--tag", "a-b", "--no-progress"]) == 2


def test_nsa_runs_sparse_only_and_bad_arguments(tiny_runs, capsys):  # noqa: F811
    assert main(["eval", str(tiny_runs["nsa"]), "--limit", "1", "--no-progress", "--block-counts", "2"]) == 0
    ppl = json.loads((tiny_runs["nsa"] / "eval" / "perplexity.json").read_text())["results"]
    assert {r["mode"] for r in ppl} == {"sparse"}
    capsys.readouterr()
    assert main(["eval", str(tiny_runs["nsa"]), "--modes", "full", "--no-progress"]) == 2
    assert "nsa" in capsys.readouterr().err
    assert main(["eval", "/nonexistent/run", "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", str(tiny_runs["ssa"]), "--commonsense", "mmlu", "--no-progress"]) == 2
    assert "hellaswag" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", str(tiny_runs["ssa"]), "--modes", "dense"])


def test_model_statistics_match_direct_computation(tiny_runs):  # noqa: F811
    """The per-layer dicts the model returns equal attention_statistics on that layer's q, k."""
    from ssa.evaluation.attention import attention_report
    from ssa.evaluation.loading import load
    from ssa.ops import select_blocks
    from ssa.ops.statistics import attention_statistics, summarize_statistics

    loaded = load(tiny_runs["full"])
    model = loaded.model
    torch.manual_seed(0)
    device = next(model.parameters()).device  # `load` puts the model on the GPU when there is one
    ids = torch.randint(0, 256, (2, 48)).to(device)
    captured = {}
    attn = model.model.layers[0].self_attn

    def hook(mod, args, kwargs, out):
        captured["x"] = args[0]
    h = attn.register_forward_hook(hook, with_kwargs=True)
    out = model(ids, attention_mode="full", block_count=2, output_attention_stats=True)
    h.remove()
    from ssa.model.rope import apply_rope

    x = captured["x"]
    B, T, _ = x.shape
    pos = torch.arange(T, device=device)[None].expand(B, T)
    cos, sin = model.model.rotary(pos)
    q = apply_rope(attn.q_proj(x).view(B, T, attn.num_heads, attn.head_dim), cos, sin)
    k = apply_rope(attn.k_proj(x).view(B, T, attn.num_kv_heads, attn.head_dim), cos, sin)
    idx = select_blocks(q, k, block_size=8, block_count=2)
    direct = attention_statistics(q, k, idx, 8, attn.head_dim ** -0.5)
    for key in direct:
        torch.testing.assert_close(out.attention_stats[0][key], direct[key])
    rep = attention_report(model, ids, ["full"], block_count=2, progress=False, batch_size=1)
    assert rep["full"]["overall"]["sparsity"] == pytest.approx(
        summarize_statistics(out.attention_stats)["overall"]["sparsity"], rel=1e-6)
