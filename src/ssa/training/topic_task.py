"""The embedded "topic" task of `ssa demo`: name a row's topic from evidence that is both spread out
and written down locally.

Every row of `seq_len` tokens has a hidden topic z, one of `topics` symbols. The model must name z
at every position of the last `answer_blocks` blocks (the logits there predict z; no other position
is scored). The row holds three kinds of evidence:

  spread   z is over-represented in the first part: `repeats` extra copies scattered among random
           symbols (the filler uses the same symbols as the topics, so one sighting proves nothing);
  local    every block holds the pair [z, marker] at a random offset, the marker one of
           `marker_types` tokens that carry no information themselves;
  decoy    a decoy symbol d != z appears `decoys` times in each of the last answer_blocks + 1 blocks.

Counting symbols over the whole row finds z in most rows (about 5 in 6 with the defaults: the
spread and local copies outnumber the decoys); counting in a sparse window (the query's own block
plus a few selected blocks) mostly picks d, because the decoys outnumber z there. Reading the token
before a marker works in any window, because every block holds a pair. A model that only ever
attends to everything may lean on counting; one trained to work sparse as well has to read the
pairs. That is the difference between FullAttn and SSA that `ssa demo` shows.

Rows are generated on the fly from a seeded `torch.Generator`: nothing is stored or downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100  # label of the positions that are not scored


@dataclass(frozen=True)
class TopicTask:
    """Shape of the generated rows; token ids are symbols 0..symbols-1, then the markers."""

    seq_len: int = 128
    block_size: int = 8
    symbols: int = 8  # filler alphabet; the topics are its first `topics` symbols
    topics: int = 8
    marker_types: int = 4
    repeats: int = 8
    decoys: int = 4
    answer_blocks: int = 4

    def validate(self) -> None:
        for name in ("seq_len", "block_size", "symbols", "topics", "marker_types", "answer_blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"topic task: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("repeats", "decoys"):
            if getattr(self, name) < 0:
                raise ValueError(f"topic task: {name} must be >= 0, got {getattr(self, name)}")
        if self.block_size < 2 or self.seq_len % self.block_size:
            raise ValueError(f"topic task: block_size must be >= 2 and divide seq_len ({self.seq_len}), "
                             f"got {self.block_size}")
        if not 2 <= self.topics <= self.symbols:
            raise ValueError(f"topic task: topics must be in [2, symbols={self.symbols}], got {self.topics}")
        blocks = self.seq_len // self.block_size
        if self.answer_blocks + 1 >= blocks:
            raise ValueError(f"topic task: answer_blocks must be < {blocks - 1} (blocks per row - 1), "
                             f"got {self.answer_blocks}")
        if self.decoys > self.block_size - 2:
            raise ValueError(f"topic task: decoys must be <= block_size - 2 = {self.block_size - 2} "
                             f"(a block also holds its pair), got {self.decoys}")
        if self.repeats > self.spread_len - 2 * (self.spread_len // self.block_size):
            raise ValueError(f"topic task: repeats ({self.repeats}) must fit in the free positions before "
                             f"the answer blocks")

    @property
    def vocab_size(self) -> int:
        return self.symbols + self.marker_types

    @property
    def answer_from(self) -> int:
        """First position whose logits are scored."""
        return self.seq_len - self.answer_blocks * self.block_size

    @property
    def spread_len(self) -> int:
        """The positions that hold the scattered copies: all before the decoy blocks."""
        return self.answer_from - self.block_size


def topic_rows(task: TopicTask, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens [batch, seq_len] and labels [batch, seq_len] in the shifted causal-LM convention of
    `SSAForCausalLM` (labels[:, t + 1] is what the logits at t must predict): z from answer_from + 1
    on, IGNORE elsewhere."""
    T, s = task.seq_len, task.block_size
    blocks = T // s
    g = generator
    x = torch.randint(0, task.symbols, (batch, T), generator=g)
    z = torch.randint(0, task.topics, (batch,), generator=g)
    taken = torch.zeros(batch, T, dtype=torch.bool)

    # The local pairs: z then a marker, at a random offset inside every block.
    pair = torch.randint(0, s - 1, (batch, blocks), generator=g) + torch.arange(blocks) * s
    x.scatter_(1, pair, z[:, None].expand(-1, blocks))
    marker = task.symbols + torch.randint(0, task.marker_types, (batch, blocks), generator=g)
    x.scatter_(1, pair + 1, marker)
    taken.scatter_(1, pair, True)
    taken.scatter_(1, pair + 1, True)

    # The spread copies: at random free positions before the decoy blocks.
    free_first = torch.rand(batch, T, generator=g) + 2.0 * taken
    free_first[:, task.spread_len:] = 4.0  # sorts after every free position
    where = free_first.argsort(-1)[:, : task.repeats]
    x.scatter_(1, where, z[:, None].expand(-1, task.repeats))

    # The decoys: d != z, in each block from one before the answer blocks on.
    d = (z + torch.randint(1, task.topics, (batch,), generator=g)) % task.topics
    for start in range(task.spread_len, T, s):
        free_first = torch.rand(batch, s, generator=g) + 2.0 * taken[:, start:start + s]
        where = free_first.argsort(-1)[:, : task.decoys] + start
        x.scatter_(1, where, d[:, None].expand(-1, task.decoys))

    labels = torch.full_like(x, IGNORE)
    labels[:, task.answer_from + 1:] = z[:, None]
    return x, labels


@dataclass(frozen=True)
class TopicRun:
    """One model trained on the topic task by `train_and_score`: the method, its seed, the training
    budget (blocks per query in SSA's sparse stream and in sparse inference) and the loop's settings."""

    method: str
    seed: int = 0
    steps: int = 600
    block_count: int = 2
    eval_block_counts: tuple[int, ...] = (2, 3, 4)
    eval_rows: int = 512
    batch: int = 32
    lr: float = 3e-3
    hidden_size: int = 64
    layers: int = 2
    threads: int = 1
    device: str = "cpu"


def build_model(task: TopicTask, run: TopicRun):
    from ssa.model import SSAConfig, SSAForCausalLM

    config = SSAConfig(method=run.method, vocab_size=task.vocab_size, hidden_size=run.hidden_size,
                       num_hidden_layers=run.layers, num_attention_heads=4, num_key_value_heads=2,
                       block_size=task.block_size, block_count=run.block_count,
                       max_position_embeddings=task.seq_len, rope_theta=10000.0, backend="torch")
    return SSAForCausalLM(config)


@torch.no_grad()
def answer_scores(model, tokens: torch.Tensor, labels: torch.Tensor, mode: str, block_count: int | None,
                  batch: int = 128) -> dict:
    """{"accuracy", "ce"}: argmax accuracy and mean cross-entropy (nats) over the scored positions."""
    right = total = 0
    nll = 0.0
    for i in range(0, tokens.shape[0], batch):
        logits = model(tokens[i:i + batch], attention_mode=mode, block_count=block_count).logits[:, :-1].float()
        target = labels[i:i + batch, 1:]
        scored = target != IGNORE
        right += int((logits.argmax(-1) == target)[scored].sum())
        nll += float(torch.nn.functional.cross_entropy(logits[scored], target[scored], reduction="sum"))
        total += int(scored.sum())
    return {"accuracy": right / total, "ce": nll / total}


def train(task: TopicTask, run: TopicRun):
    """A model trained on freshly generated rows (AdamW, the LR decayed along a cosine to a tenth so
    that the last steps settle instead of ending on a noisy step), in eval mode, and the seconds it
    took. Seeded: the same arguments give the same model on the same machine and torch build."""
    import time

    torch.set_num_threads(run.threads)
    torch.manual_seed(run.seed)
    model = build_model(task, run).to(run.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=run.steps, eta_min=run.lr / 10)
    rows = torch.Generator().manual_seed(1_000 + run.seed)
    start = time.perf_counter()
    for _ in range(run.steps):
        tokens, labels = (t.to(run.device) for t in topic_rows(task, run.batch, rows))
        model(tokens, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
    return model.eval(), time.perf_counter() - start


def held_out_rows(task: TopicTask, run: TopicRun) -> list[torch.Tensor]:
    """The scored rows: the same for every method and seed (their own generator seed)."""
    return [t.to(run.device) for t in topic_rows(task, run.eval_rows, torch.Generator().manual_seed(999_999))]


def conflict_rows(task: TopicTask, tokens: torch.Tensor, labels: torch.Tensor, extra: int = 4, seed: int = 5):
    """Rows whose two cues disagree: `tokens` with the row's decoy d also written `extra` times into
    every block before the decoy blocks (never over a pair), so that counting over the whole row
    finds d while the pairs still name z. Returns the rows and d per row."""
    x = tokens.clone()
    z = labels[:, -1]
    tail = x[:, task.spread_len:]
    counts = torch.stack([(tail == v).sum(-1) for v in range(task.topics)], -1)
    d = counts.scatter(1, z[:, None], -1).argmax(-1)  # the most frequent other topic in the decoy blocks
    g = torch.Generator(device=x.device).manual_seed(seed)
    for start in range(0, task.spread_len, task.block_size):
        block = x[:, start:start + task.block_size]  # a view: writes land in x
        is_marker = block >= task.symbols
        pair = is_marker | torch.roll(is_marker, -1, dims=1)  # markers never open a block, so no wrap
        order = (torch.rand(block.shape, generator=g, device=x.device) + 2.0 * pair).argsort(-1)[:, :extra]
        block.scatter_(1, order, d[:, None].expand(-1, extra))
    return x, d


@torch.no_grad()
def cue_shares(model, task: TopicTask, tokens: torch.Tensor, labels: torch.Tensor) -> dict:
    """On the conflict rows of `tokens`, in full mode: the share of scored answers that name z (the
    pairs' answer) and d (the count's answer)."""
    x, d = conflict_rows(task, tokens, labels)
    pred = model(x, attention_mode="full").logits[:, task.answer_from:-1].argmax(-1)
    return {"pairs": float((pred == labels[:, -1:]).float().mean()), "count": float((pred == d[:, None]).float().mean())}


def train_and_score(task: TopicTask, run: TopicRun) -> dict:
    """`train`, then the answer scores on the held-out rows in full mode and in sparse mode at every
    `eval_block_counts`, and which cue the model follows when they disagree (`cue_shares`)."""
    model, seconds = train(task, run)
    held_out = held_out_rows(task, run)
    scores = {"full": answer_scores(model, *held_out, "full", None)}
    for n in run.eval_block_counts:
        scores[f"n={n}"] = answer_scores(model, *held_out, "sparse", n)
    return {"method": run.method, "seed": run.seed, "train_seconds": seconds, "scores": scores,
            "cues": cue_shares(model, task, *held_out)}
