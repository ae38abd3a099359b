"""lm-evaluation-harness model "ssa": SSA checkpoints in `lm_eval`.

    python -m ssa.evaluation.lm_eval --model ssa \\
        --model_args pretrained=RUN_DIR,attention_mode=sparse,block_count=16 --tasks piqa

model_args: pretrained (run dir or checkpoint dir, required), attention_mode (full | sparse;
default: the checkpoint's inference mode), block_count, block_size, device (auto), dtype (auto),
batch_size, max_length (default: the training length), max_gen_toks (256), rope_factor
(llama3 RoPE scaling factor for contexts beyond the training length; default none).

Requests are scored with the same code as `ssa eval --commonsense` (ssa.evaluation.loglikelihood):
loglikelihood and generate_until follow the harness's conventions; loglikelihood_rolling scores
every token of the string once, conditioned on EOS, with sliding windows of max_length that
advance by max_length/2 (so each token sees at least half a window of context).
"""

from __future__ import annotations

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm.auto import tqdm

from . import loading
from .loglikelihood import encode_pair, greedy_generate, score_continuations
from .perplexity import Accumulator, sliding_window_score
from .text import encode, eos_id


@register_model("ssa")
class SSALM(LM):
    def __init__(self, pretrained: str | None = None, attention_mode: str | None = None, block_count: int | None = None,
                 block_size: int | None = None, device: str = "auto", dtype: str = "auto", batch_size=8,
                 max_length: int | None = None, max_gen_toks: int = 256, rope_factor: float | None = None, **kwargs):
        super().__init__()
        if pretrained is None:
            raise ValueError("model_args needs pretrained=PATH (an ssa run directory or checkpoint directory)")
        unknown = sorted(k for k in kwargs if k not in ("max_batch_size", "trust_remote_code"))
        if unknown:
            raise ValueError(f"unknown model_args {unknown}; allowed: pretrained, attention_mode, block_count, "
                             "block_size, device, dtype, batch_size, max_length, max_gen_toks, rope_factor")
        if attention_mode in ("", "none", "None"):
            attention_mode = None
        if attention_mode is not None and attention_mode not in ("full", "sparse"):
            raise ValueError(f"model_args attention_mode must be one of ('full', 'sparse'), got {attention_mode!r}")
        for name, v in (("block_count", block_count), ("block_size", block_size), ("max_length", max_length),
                        ("max_gen_toks", max_gen_toks)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"model_args {name} must be an integer >= 1, got {v!r}")
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            # lm_eval's CLI passes device="cuda" unless told otherwise; say so and run on the CPU.
            import logging

            logging.getLogger(__name__).warning("device=%s requested but CUDA is unavailable: using cpu", device)
            device = "cpu"
        self.loaded = loading.load(pretrained, device=device, dtype=dtype)
        if rope_factor not in (None, 1, 1.0):
            self.loaded = loading.with_config(
                self.loaded, rope_llama3_scaling=loading.llama3_scaling(float(rope_factor), self.loaded.train_len))
        if self.loaded.method == "nsa" and attention_mode == "full":
            raise ValueError("attention_mode=full: method 'nsa' has no full-attention stream")
        self.attention_mode = attention_mode
        self.block_count = block_count
        self.block_size = block_size
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8  # "auto" -> 8
        self.max_length = max_length or self.loaded.train_len
        self.max_gen_toks = max_gen_toks
        self._device = self.loaded.device

    # lm_eval helpers ----------------------------------------------------------------------------
    @property
    def model(self):
        return self.loaded.model

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def eot_token_id(self) -> int:
        return eos_id(self.tokenizer)

    @property
    def tokenizer_name(self) -> str:
        return str(self.loaded.step_dir)

    def _budget(self):
        sparse = self.attention_mode == "sparse" or (self.attention_mode is None and self.model.config.inference_mode == "sparse")
        return (self.block_count, self.block_size) if sparse else (None, None)

    # The three request types ----------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False):
        pairs = [encode_pair(self.tokenizer, *req.args) for req in requests]
        n, s = self._budget()
        return score_continuations(self.model, pairs, self.max_length, self.attention_mode, n, s,
                                   batch_size=self.batch_size, progress=not disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        n, s = self._budget()
        out = []
        window = self.max_length
        for req in tqdm(requests, desc="loglikelihood_rolling", disable=disable_tqdm, leave=False):
            (text,) = req.args
            ids = torch.tensor([self.eot_token_id] + encode(self.tokenizer, text), dtype=torch.long)
            acc = Accumulator(torch.ones(max(len(self.tokenizer), self.model.config.vocab_size), dtype=torch.long))
            if ids.numel() > 1:
                sliding_window_score(self.model, ids, window, max(1, window // 2), acc, self.attention_mode, n, s)
            out.append(-acc.nll)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False):
        n, s = self._budget()
        out = []
        for req in tqdm(requests, desc="generate_until", disable=disable_tqdm, leave=False):
            context, gen_kwargs = req.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.pop("until", None) or []
            if isinstance(until, str):
                until = [until]
            max_new = int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))
            if gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature", 0.0) or 0.0) > 0:
                raise ValueError("the ssa lm_eval model only decodes greedily (do_sample=False, temperature=0)")
            ctx = encode(self.tokenizer, context) or [self.eot_token_id]
            new = greedy_generate(self.model, ctx, max_new, stop_ids={self.eot_token_id}, stop_strings=until,
                                  tokenizer=self.tokenizer, max_length=self.max_length, mode=self.attention_mode,
                                  block_count=n, block_size=s)
            text = self.tokenizer.decode(new)
            for stop in until:
                if stop and stop in text:
                    text = text.split(stop)[0]
            out.append(text)
        return out


def register() -> None:
    """Importing this module registers "ssa" with lm_eval's model registry; kept for explicit calls."""
    return None
