"""The embedded "synthetic-recall" corpus: key -> value facts buried in filler, queried later.

Each document interleaves three kinds of sentences:
  statement  "The code for <key> is <digits>."
  filler     short sentences generated from small word lists (predictable, no digits)
  query      "Again, the code for <key> is <digits>."   (the same digits as the statement)
The query repeats the statement's wording so that the digits follow the same context ("for <key>
is ") in both places: the model can learn recall as plain copying (an induction head), which a
small model picks up within a few hundred steps, instead of a reformulation it could not.
A query is only emitted once at least `min_gap` bytes separate it from its statement, so with byte
tokens the digits can only be predicted by attending back further than `min_gap` tokens. With the
tiny preset (block_size 16, block_count 4: a 64-token sparse window) `min_gap=96` forces the
sparse stream to *select* the block holding the statement, which is exactly what block selection
has to learn. Queries are emitted before `max_gap` bytes so that most pairs share a packed row.

Values are fresh random digits in every statement, so nothing can be memorised: the only way to
predict them is recall. Generation is seeded and pure Python (no file, no download).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

KEYS = (
    "apple river stone cloud tiger violin garden candle marble forest copper lantern harbor meadow "
    "pepper falcon orchid canyon rocket velvet walnut glacier bishop cactus dragon ember feather "
    "galaxy hammer island jacket kettle ladder magnet needle oyster parrot quartz raven saddle "
    "thimble umbrella vessel wizard yacht zebra anchor bamboo cobalt dolphin eagle fossil ginger "
    "helmet iguana jungle koala lemon mango nickel olive panda quiver ribbon salmon tulip"
).split()
# Single-letter keys: the key is always the 4th byte before the value, so recall becomes a
# fixed-offset match that a small byte-level model learns much sooner than matching whole words.
LETTER_KEYS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
KEY_SETS = {"words": tuple(KEYS), "letters": LETTER_KEYS}

_SUBJECTS = "the farmer|a child|the old sailor|my neighbor|the baker|a tired student|the captain|our teacher|the small dog|a stranger".split("|")
_VERBS = "carried|painted|found|watched|cleaned|forgot|sold|borrowed|admired|repaired|followed|described".split("|")
_ADJS = "green|quiet|heavy|bright|broken|tiny|ancient|warm|narrow|golden|muddy|gentle".split("|")
_OBJECTS = "basket|wagon|letter|window|bridge|blanket|fence|bottle|map|chair|drum|kite".split("|")
_PLACES = "market|hill|station|library|kitchen|harbor|village|field|bakery|tower|school|barn".split("|")
_TIMES = "in the morning|after lunch|at night|before the rain|on sunday|during the storm|at dawn|later".split("|")


@dataclass(frozen=True)
class RecallSpec:
    """Shape of the generated documents (sizes in bytes / characters)."""

    doc_min: int = 600
    doc_max: int = 1800
    min_gap: int = 96
    max_gap: int = 400
    value_digits: int = 6
    max_pending: int = 6
    filler_percent: int = 15  # share of free choices that emit filler rather than a statement/query
    keys: str = "words"  # "words" (KEYS) or "letters" (LETTER_KEYS)

    def validate(self) -> None:
        if self.keys not in KEY_SETS:
            raise ValueError(f"data.synthetic.keys must be one of {tuple(KEY_SETS)}, got {self.keys!r}")
        if self.max_pending >= len(KEY_SETS[self.keys]):
            raise ValueError(f"data.synthetic.max_pending must be < {len(KEY_SETS[self.keys])} for keys={self.keys!r}")
        if not isinstance(self.filler_percent, int) or not 0 <= self.filler_percent <= 100:
            raise ValueError(f"data.synthetic.filler_percent must be an integer in [0, 100], got {self.filler_percent!r}")
        for name in ("doc_min", "doc_max", "min_gap", "max_gap", "value_digits", "max_pending"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"data.synthetic.{name} must be a positive integer, got {v!r}")
        if self.doc_max < self.doc_min:
            raise ValueError(f"data.synthetic.doc_max ({self.doc_max}) must be >= doc_min ({self.doc_min})")
        if self.max_gap <= self.min_gap:
            raise ValueError(f"data.synthetic.max_gap ({self.max_gap}) must be > min_gap ({self.min_gap})")


def _filler(rng: random.Random) -> str:
    s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} the {rng.choice(_ADJS)} {rng.choice(_OBJECTS)}"
    r = rng.random()
    if r < 0.4:
        s += f" near the {rng.choice(_PLACES)}"
    elif r < 0.7:
        s += f" {rng.choice(_TIMES)}"
    return s[0].upper() + s[1:] + ". "


def _value(rng: random.Random, digits: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(digits))


def recall_document(rng: random.Random, spec: RecallSpec) -> str:
    """One document. Returns text; statement->query distances lie in [min_gap, max_gap + ~60]."""
    target = rng.randint(spec.doc_min, spec.doc_max)
    parts: list[str] = []
    pos = 0
    pending: list[tuple[str, str, int]] = []  # (key, value, byte offset where the statement ended)
    while pos < target or pending:
        ready = [p for p in pending if pos - p[2] >= spec.min_gap]
        overdue = [p for p in ready if pos - p[2] >= spec.max_gap - 60]
        r = rng.random()
        fact = 1.0 - spec.filler_percent / 100  # the rest of [0, 1) emits filler
        if overdue or (ready and r < fact / 2) or (pos >= target and ready):
            key, value, _ = (overdue or ready)[0] if overdue else rng.choice(ready)
            pending = [p for p in pending if p[0] != key]
            s = f"Again, the code for {key} is {value}. "
        elif pos < target and len(pending) < spec.max_pending and r < fact:
            used = {p[0] for p in pending}
            key = rng.choice([k for k in KEY_SETS[spec.keys] if k not in used])
            value = _value(rng, spec.value_digits)
            s = f"The code for {key} is {value}. "
            pending.append((key, value, pos + len(s)))
        else:
            s = _filler(rng)
        parts.append(s)
        pos += len(s)
    return "".join(parts).rstrip()


def recall_documents(seed: int, num_bytes: int, spec: RecallSpec | None = None):
    """Yield documents from a stream seeded by `seed` until about `num_bytes` bytes were produced."""
    spec = spec or RecallSpec()
    spec.validate()
    rng = random.Random(seed)
    produced = 0
    while produced < num_bytes:
        doc = recall_document(rng, spec)
        produced += len(doc) + 1  # +1 for the EOS separator
        yield doc


def recall_probe(seed: int, distance: int, spec: RecallSpec | None = None) -> tuple[str, str]:
    """A (prompt, answer) pair whose statement sits `distance` bytes of filler before the query.

    For retrieval checks: the model should continue `prompt` with `answer` (the digits).
    """
    spec = spec or RecallSpec()
    rng = random.Random(seed)
    key = rng.choice(KEY_SETS[spec.keys])
    value = _value(rng, spec.value_digits)
    filler = ""
    while len(filler) < distance:
        filler += _filler(rng)
    return f"The code for {key} is {value}. {filler}Again, the code for {key} is ", value


# ----------------------------------------------------------------------------------------------
# "synthetic-copy": a random segment, then filler, then the same segment again
# ----------------------------------------------------------------------------------------------
# Segment symbols are disjoint from the filler's (lowercase words), so the only way to predict a
# repeated segment is to find its first occurrence: an induction (copy) head. Each symbol of the
# repetition after the first is predictable exactly, and only by attending `gap` bytes back.
# The first 36 symbols are letters and digits; the ASCII punctuation after them (all but the
# brackets and the filler's full stop) makes a larger alphabet, so that with `distinct` segments a
# symbol names its position in the segment almost uniquely: a one-token lookup (the previous-token
# head + match of an induction circuit) is then unambiguous, and a small model learns it quickly.
COPY_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" + "!\"#$%&'()*+,-/:;<=>?@\\^_`{|}~"
COPY_OPEN, COPY_CLOSE = "[", "]"
COPY_LOSSES = ("all", "repeat")


@dataclass(frozen=True)
class CopySpec:
    """Shape of the copy documents: `[SEG] filler [SEG]` (sizes in bytes)."""

    segment_min: int = 16
    segment_max: int = 32
    min_gap: int = 96
    max_gap: int = 192
    alphabet: int = 36  # segment symbols: the first `alphabet` of COPY_ALPHABET (letters and digits)
    distinct: bool = False  # no symbol twice in one segment (needs segment_max <= alphabet)
    # > 0: every document is exactly `row_len - 1` bytes, so with its EOS it fills one training row
    # of `data.seq_len = row_len` byte tokens, and every row holds one whole document. Without it,
    # rows are cut from the document stream anywhere, and a repeat whose first occurrence fell into
    # the previous row cannot be predicted at all: noise in the loss instead of signal. The gap is
    # then exact (filler cut mid-sentence) and filler after the repeat pads the row.
    row_len: int = 0
    # Which next-token predictions the training loss counts: "all" bytes, or only the "repeat"
    # (the repeated segment's symbols after its first: the positions copy accuracy measures). With
    # "all", the filler's predictions outnumber the copy predictions many times over and a small
    # model spends its first thousand steps on them; with "repeat" every gradient is about
    # copying and it learns the task within a few hundred steps. Needs `row_len` (one document per
    # row, so the repeat can be found in each row) and byte tokens.
    loss: str = "all"

    def validate(self) -> None:
        for name in ("segment_min", "segment_max", "min_gap", "max_gap"):
            v = getattr(self, name)
            low = 0 if name.endswith("gap") else 1  # gap 0: the repeat follows at once, no filler
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"data.synthetic.{name} must be an integer >= {low}, got {v!r}")
        a = self.alphabet
        if not isinstance(a, int) or isinstance(a, bool) or not 2 <= a <= len(COPY_ALPHABET):
            raise ValueError(f"data.synthetic.alphabet must be an integer in [2, {len(COPY_ALPHABET)}], got {a!r}")
        if not isinstance(self.distinct, bool):
            raise ValueError(f"data.synthetic.distinct must be true or false, got {self.distinct!r}")
        if self.distinct and self.segment_max > a:
            raise ValueError(f"data.synthetic.distinct needs segment_max ({self.segment_max}) <= alphabet ({a})")
        if self.segment_max < self.segment_min:
            raise ValueError(f"data.synthetic.segment_max ({self.segment_max}) must be >= segment_min ({self.segment_min})")
        if self.max_gap < self.min_gap:
            raise ValueError(f"data.synthetic.max_gap ({self.max_gap}) must be >= min_gap ({self.min_gap})")
        r = self.row_len
        if not isinstance(r, int) or isinstance(r, bool) or r < 0:
            raise ValueError(f"data.synthetic.row_len must be an integer >= 0, got {r!r}")
        if r and r - 1 < self.longest():
            raise ValueError(f"data.synthetic.row_len ({r}) must be > {self.longest()}: the longest document "
                             f"(2 x (segment_max + 2) + max_gap + 1) and its EOS must fit in one row")
        if self.loss not in COPY_LOSSES:
            raise ValueError(f"data.synthetic.loss must be one of {', '.join(COPY_LOSSES)}; got {self.loss!r}")
        if self.loss == "repeat" and not r:
            raise ValueError("data.synthetic.loss=repeat needs data.synthetic.row_len (one document per row)")

    def longest(self) -> int:
        """Bytes of the longest document when `row_len` is set (exact gaps, no padding)."""
        return 2 * (self.segment_max + 2) + self.max_gap + 1


def _filler_text(rng: random.Random, length: int) -> str:
    """At least `length` characters of filler sentences."""
    text = ""
    while len(text) < length:
        text += _filler(rng)
    return text


def copy_document(rng: random.Random, spec: CopySpec) -> str:
    """`[SEG] filler [SEG]`: the second SEG starts at least `min_gap` bytes after the first ends
    (exactly `gap + 1` with `row_len`; filler before and after then pads the document to
    `row_len - 1` bytes)."""
    symbols = COPY_ALPHABET[: spec.alphabet]
    n = rng.randint(spec.segment_min, spec.segment_max)
    seg = "".join(rng.sample(symbols, n) if spec.distinct else (rng.choice(symbols) for _ in range(n)))
    gap_target = rng.randint(spec.min_gap, spec.max_gap)
    filler = _filler_text(rng, gap_target)
    if not spec.row_len:
        return f"{COPY_OPEN}{seg}{COPY_CLOSE} {filler}{COPY_OPEN}{seg}{COPY_CLOSE}"
    doc = f"{COPY_OPEN}{seg}{COPY_CLOSE} {filler[:gap_target]}{COPY_OPEN}{seg}{COPY_CLOSE}"
    # The free bytes go partly before the pair, so its first occurrence does not always sit in the
    # row's first block (which an attention sink would make easy to select), partly after it.
    free = spec.row_len - 1 - len(doc)
    lead = rng.randint(0, free)
    text = _filler_text(rng, free + 1)
    return text[:lead] + doc + (" " + text[lead:])[: free - lead]


def copy_documents(seed: int, num_bytes: int, spec: CopySpec | None = None):
    """Yield copy documents from a stream seeded by `seed` until about `num_bytes` bytes were produced."""
    spec = spec or CopySpec()
    spec.validate()
    rng = random.Random(seed)
    produced = 0
    while produced < num_bytes:
        doc = copy_document(rng, spec)
        produced += len(doc) + 1
        yield doc


def copy_span(doc: str) -> tuple[int, int]:
    """Character span [start, end) of the repeated segment of one copy document, without its first
    symbol: after `[` alone the model cannot tell which earlier segment of a packed row to copy,
    from the second symbol on it can. Copy accuracy is measured on these positions."""
    seg_len = doc.index(COPY_CLOSE) - doc.index(COPY_OPEN) - 1
    end = doc.rindex(COPY_CLOSE)  # the closing bracket of the repeat (padding filler may follow)
    return end - seg_len + 1, end


def repeat_mask(rows, open_id: int, close_id: int):
    """Bool mask [B, T] of the positions `copy_span` names, found in rows [B, T] of token ids that
    each start with one whole copy document (`row_len`; what may follow, e.g. the EOS, has no
    brackets). A document holds exactly two `[` and two `]`: the repeat's symbols are the tokens
    after the second `[` and before the second `]`; the first of them is left out, as in copy_span."""
    opens = (rows == open_id).cumsum(-1)
    closes = (rows == close_id).cumsum(-1)
    inside = (opens == 2) & (closes == 1) & (rows != open_id)
    after_open = (rows == open_id).roll(1, -1)  # the repeat's first symbol follows the second `[`
    after_open[..., 0] = False
    return inside & ~after_open
