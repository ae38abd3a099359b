"""Reading text corpora, JSONL records and JSON config files with one-line errors that name the file and line.

Shared by training data and evaluation, which read the same kinds of files.
"""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Iterator


def read_json_object(path: Path, what: str) -> dict:
    """The JSON object in `path`; one-line errors name `what` and the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except OSError as err:
        raise ValueError(f"{what} {path} could not be read: {err}") from None
    return parse_json_object(text, f"{what} {path}")


def parse_json_object(text: str, where: str) -> dict:
    """The JSON object in `text`, read from `where` (a file, or file:line); one-line errors name it."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} is not valid JSON ({err})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where} must hold a JSON object")
    return obj


def iter_jsonl(path: Path, label: str = "file") -> Iterator[tuple[int, dict]]:
    """(line number, record) of a .jsonl or .jsonl.gz file; blank lines are skipped."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                yield lineno, parse_json_object(line, f"{label} {path}:{lineno}")
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as err:
        raise ValueError(f"{label} {path} could not be read: {err}") from None


def iter_file_documents(path: Path, text_field: str = "text", label: str = "file") -> Iterator[str]:
    """Documents of a .txt / .txt.gz file (the whole file) or a .jsonl / .jsonl.gz file (field `text_field` per line)."""
    name = path.name
    if name.endswith(".txt") or name.endswith(".txt.gz"):
        try:
            if name.endswith(".gz"):
                with gzip.open(path, "rt", encoding="utf-8", errors="replace") as fh:
                    yield fh.read()
            else:
                yield path.read_text(encoding="utf-8", errors="replace")
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{label} {path} could not be read: {err}") from None
        return
    if not (name.endswith(".jsonl") or name.endswith(".jsonl.gz")):
        raise ValueError(f"{label} {path}: unsupported file type (allowed: .txt, .txt.gz, .jsonl, .jsonl.gz)")
    for lineno, record in iter_jsonl(path, label):
        if not isinstance(record.get(text_field), str):
            raise ValueError(f"{label} {path}:{lineno} has no string field {text_field!r}")
        yield record[text_field]
