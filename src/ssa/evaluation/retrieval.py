"""Passkey retrieval (needle in a haystack): a seeded grid of context length x needle depth.

A sample is: an instruction, a haystack of `length` tokens in total (repeated filler sentences, or
real book text), a needle "The pass key is K. Remember it. K is the pass key." inserted at a depth
in [0, 1] of the haystack, and the question "What is the pass key? The pass key is". K is a random
5-digit number. Two scores per sample:
  exact_match  greedy decoding produces K first (after optional spaces)
  rank         position of " K" among " K" and `num_distractors` other random 5-digit keys when
               ranked by log-likelihood (1 = the true key is strictly the most likely; ties count
               against it, so a model indifferent to the key gets the worst rank); rank_accuracy =
               fraction of rank 1. This one says something even for models too small to copy.
Everything is built at the token level (pieces are tokenized separately and concatenated), so the
same seed gives the same samples for a given tokenizer.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

from tqdm.auto import tqdm

from .loglikelihood import greedy_generate, score_continuations
from .text import encode, eos_id

HAYSTACKS = ("filler", "text")
INSTRUCTION = "There is a pass key hidden in this text. Find it and remember it.\n"
FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ")
QUESTION = "\nWhat is the pass key? The pass key is"


@dataclass
class RetrievalSpec:
    lengths: list = field(default_factory=lambda: [256, 512])
    depths: list = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    haystacks: list = field(default_factory=lambda: ["filler"])
    samples: int = 4
    num_distractors: int = 9
    seed: int = 0

    def __post_init__(self):
        bad = [h for h in self.haystacks if h not in HAYSTACKS]
        if bad:
            raise ValueError(f"haystacks must be among {HAYSTACKS}, got {bad}")
        if any(not 0.0 <= d <= 1.0 for d in self.depths):
            raise ValueError(f"depths must be in [0, 1], got {self.depths}")
        if any(int(L) < 1 for L in self.lengths):
            raise ValueError(f"lengths must be >= 1 tokens, got {self.lengths}")
        if self.samples < 1 or self.num_distractors < 1:
            raise ValueError("samples and num_distractors must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


def random_key(rng: random.Random) -> str:
    return str(rng.randint(10000, 99999))


def haystack_text(kind: str, min_chars: int, rng: random.Random, book_text: str | None = None) -> str:
    if kind == "filler":
        return FILLER * (min_chars // len(FILLER) + 2)
    if not book_text:
        raise ValueError("the 'text' haystack needs book text (shared gutenberg data or --long-data)")
    need = min(len(book_text), min_chars + 1000)
    start = rng.randrange(0, max(1, len(book_text) - need))
    text = book_text[start: start + need]
    while len(text) < min_chars:
        text += " " + book_text[: min_chars]
    return text


def make_sample(tokenizer, length: int, depth: float, kind: str, rng: random.Random, num_distractors: int,
                book_text: str | None = None) -> dict:
    """Token ids of one prompt (exactly `length` tokens when the haystack allows) and its keys."""
    key = random_key(rng)
    distractors = set()
    while len(distractors) < num_distractors:
        d = random_key(rng)
        if d != key:
            distractors.add(d)
    head = encode(tokenizer, INSTRUCTION)
    needle = encode(tokenizer, f" The pass key is {key}. Remember it. {key} is the pass key. ")
    question = encode(tokenizer, QUESTION)
    n_hay = length - len(head) - len(needle) - len(question)
    if n_hay < 0:
        raise ValueError(f"retrieval length {length} is too short for the prompt ({length - n_hay} tokens needed)")
    hay_ids = encode(tokenizer, haystack_text(kind, 8 * n_hay + 64, rng, book_text))[:n_hay]
    if len(hay_ids) < n_hay:
        raise ValueError(f"haystack text too short for {length} tokens")
    pos = round(depth * n_hay)
    ids = head + hay_ids[:pos] + needle + hay_ids[pos:] + question
    return {"ids": ids, "key": key, "distractors": sorted(distractors), "needle_at": len(head) + pos}


def min_prompt_tokens(tokenizer) -> int:
    """Tokens of the prompt without haystack (a 5-digit key), plus a little haystack."""
    key = "12345"
    fixed = INSTRUCTION + f" The pass key is {key}. Remember it. {key} is the pass key. " + QUESTION
    return len(encode(tokenizer, fixed)) + 16


def default_lengths(tokenizer, train_len: int) -> list[int]:
    """0.5x, 1x and 2x the training length, raised to fit the prompt."""
    lo = min_prompt_tokens(tokenizer)
    return sorted({max(lo, L) for L in (train_len // 2, train_len, 2 * train_len)})


def _book_text(loaded) -> str | None:
    from ssa.training.tokenizer import shared_data_dir

    from .text import read_documents

    root = shared_data_dir()
    if root is None or not (root / "gutenberg" / "val.jsonl.gz").is_file():
        return None
    return next(read_documents(root / "gutenberg" / "val.jsonl.gz"))


def run_retrieval(loaded, spec: RetrievalSpec, modes, block_count=None, progress: bool = True,
                  book_text: str | None = None) -> list[dict]:
    """One row per (haystack, length, depth, mode) with exact_match, rank_accuracy, mean_rank."""
    model, tok = loaded.model, loaded.tokenizer
    if "text" in spec.haystacks and book_text is None:
        book_text = _book_text(loaded)
    n = block_count or loaded.config.block_count
    cells = [(h, L, d) for h in spec.haystacks for L in spec.lengths for d in spec.depths]
    results = []
    stop = {eos_id(tok)}
    for h, L, d in tqdm(cells, desc="retrieval", disable=not progress, leave=False):
        # The seed depends on the cell only, so every mode and checkpoint sees the same samples.
        rng = random.Random(f"{spec.seed}-{h}-{L}-{d}")
        samples = [make_sample(tok, int(L), float(d), h, rng, spec.num_distractors, book_text) for _ in range(spec.samples)]
        for mode in modes:
            bc = n if mode == "sparse" else None
            em, ranks = [], []
            for s in samples:
                cands = [s["key"]] + s["distractors"]
                pairs = [(s["ids"], encode(tok, " " + c)) for c in cands]
                lls = [ll for ll, _ in score_continuations(model, pairs, len(s["ids"]) + 16, mode, bc,
                                                          batch_size=len(pairs))]
                ranks.append(1 + sum(1 for x in lls[1:] if x >= lls[0]))  # ties count against the key
                key = s["key"]

                def diverged(ids, key=key):  # no need to decode further once the key cannot match
                    text = tok.decode(ids).lstrip()
                    return not key.startswith(text[: len(key)]) or len(text) >= len(key)

                new = greedy_generate(model, s["ids"], len(encode(tok, " " + key)) + 1, stop_ids=stop,
                                      mode=mode, block_count=bc, stop_when=diverged)
                em.append(float(tok.decode(new).strip().startswith(s["key"])))
            results.append({
                "haystack": h, "length": int(L), "depth": float(d), "mode": mode, "block_count": bc,
                "samples": len(samples), "exact_match": sum(em) / len(em),
                "rank_accuracy": sum(r == 1 for r in ranks) / len(ranks),
                "mean_rank": sum(ranks) / len(ranks), "candidates": 1 + spec.num_distractors,
            })
    return results


def summary_table(results: list[dict]) -> str:
    """Per (haystack, mode, length): means over depths."""
    from .results import table

    groups: dict = {}
    for r in results:
        groups.setdefault((r["haystack"], r["mode"], r["length"]), []).append(r)
    rows = []
    for (h, mode, L), rs in groups.items():
        rows.append([h, mode, L, sum(r["exact_match"] for r in rs) / len(rs),
                     sum(r["rank_accuracy"] for r in rs) / len(rs), sum(r["mean_rank"] for r in rs) / len(rs)])
    return table(["haystack", "mode", "length", "exact", "rank@1", "mean rank"], rows)
