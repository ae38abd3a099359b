"""The lm-evaluation-harness model "ssa", offline with a local task file (skipped without lm_eval)."""

import json
import math
import os

import pytest
import torch
from test_eval_common import tiny_runs  # noqa: F401  (fixture)

lm_eval = pytest.importorskip("lm_eval")

ITEMS = [
    {"query": "Question: How do I open a jar?\nAnswer:", "choices": ["Twist the lid.", "Paint it blue."], "gold": 0},
    {"query": "Question: What keeps you dry in rain?\nAnswer:", "choices": ["A sieve.", "An umbrella."], "gold": 1},
    {"query": "The sun rises in the", "choices": ["east", "west", "ocean floor"], "gold": 0},
]
TASK_YAML = """task: ssa_test_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{query}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


class Req:
    def __init__(self, *args):
        self.args = args


@pytest.fixture(scope="module")
def lm(tiny_runs):  # noqa: F811
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the task reads a local JSON file only
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ssa.evaluation.lm_eval_adapter import SSALM

    return SSALM(pretrained=str(tiny_runs["ssa"]), attention_mode="sparse", block_count=2, device="cpu")


def brute_force_ll(model, ids_ctx, ids_cont, **kw):
    ids = torch.tensor([ids_ctx + ids_cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids, **kw).logits[0].float(), -1)
    return sum(float(logp[i - 1, ids[0, i]]) for i in range(len(ids_ctx), ids.shape[1]))


def test_harness_task_matches_own_evaluator_and_brute_force(lm, tmp_path, tiny_runs):  # noqa: F811
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from ssa.evaluation.multiple_choice import evaluate_items

    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in ITEMS))
    (tmp_path / "task.yaml").write_text(TASK_YAML.format(path=data))
    out = simple_evaluate(model=lm, tasks=["ssa_test_mc"], task_manager=TaskManager(include_path=str(tmp_path)),
                          log_samples=True, bootstrap_iters=0)
    res = out["results"]["ssa_test_mc"]
    mine = evaluate_items(lm.model, lm.tokenizer, ITEMS, lm.max_length, "sparse", 2, progress=False)
    assert res["acc,none"] == pytest.approx(mine["acc"])
    assert res["acc_norm,none"] == pytest.approx(mine["acc_norm"])
    # Every logged log-likelihood equals a brute-force full forward over context + " choice".
    for sample in out["samples"]["ssa_test_mc"]:
        doc = sample["doc"]
        for (ctx, cont), resp in zip((a["arguments"] if isinstance(a, dict) else a for a in sample["arguments"]),
                                     sample["resps"]):
            assert cont.startswith(" ")
            ctx_ids = list(doc["query"].encode())
            ll = brute_force_ll(lm.model, ctx_ids, list(cont.encode()), attention_mode="sparse", block_count=2)
            assert float(resp[0][0]) == pytest.approx(ll, abs=1e-3)


def test_rolling_and_generation(lm):
    text = "Hello there, general."
    (got,) = lm.loglikelihood_rolling([Req(text)])
    expected = brute_force_ll(lm.model, [256], list(text.encode()), attention_mode="sparse", block_count=2)
    assert got == pytest.approx(expected, abs=1e-3)
    # Longer than max_length: every token still scored once, finite.
    (long,) = lm.loglikelihood_rolling([Req("abc " * 40)])
    assert math.isfinite(long) and long < 0
    (gen,) = lm.generate_until([Req("Once upon", {"until": ["\n"], "max_gen_toks": 5})])
    assert isinstance(gen, str) and len(gen.encode()) <= 5 and "\n" not in gen


def test_registry_and_bad_args(tiny_runs):  # noqa: F811
    from lm_eval.api.registry import get_model

    import ssa.evaluation.lm_eval_adapter as adapter

    assert get_model("ssa") is adapter.SSALM
    with pytest.raises(ValueError, match="attention_mode"):
        adapter.SSALM(pretrained=str(tiny_runs["ssa"]), attention_mode="dense", device="cpu")
    with pytest.raises(ValueError, match="pretrained"):
        adapter.SSALM(device="cpu")
    with pytest.raises(ValueError, match="nsa"):
        adapter.SSALM(pretrained=str(tiny_runs["nsa"]), attention_mode="full", device="cpu")


def test_plain_lm_eval_cli_registry_finds_ssa_without_importing_ssa():
    # The installed .pth hook must make lm_eval's own registry resolve "ssa" in a fresh interpreter
    # that never imports ssa itself, while the built-in models still load.
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from lm_eval.api.registry import get_model\n"
        "assert 'ssa' not in sys.modules\n"
        "print(get_model('ssa').__name__, get_model('dummy').__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["SSALM", "DummyLM"]
