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
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} {path} is not valid JSON: {err.msg} at line {err.lineno}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{what} {path} must hold a JSON object")
    return obj


def iter_jsonl(path: Path, label: str = "file") -> Iterator[tuple[int, dict]]:
    """(line number, record) of a .jsonl or .jsonl.gz file; blank lines are skipped."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{label} {path}:{lineno} is not valid JSON ({err.msg})") from None
                if not isinstance(record, dict):
                    raise ValueError(f"{label} {path}:{lineno} is not a JSON object")
                yield lineno, record
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
