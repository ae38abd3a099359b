"""Settings dataclasses built from config sections, with unknown keys named."""

from __future__ import annotations

from dataclasses import fields


def spec_from_dict(cls, d: dict, section: str):
    """`cls(**d)`, validated, after checking that `d` names only fields of `cls`: a misspelt key is an
    error naming the section, the unknown keys and the allowed ones, never a silent default."""
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ValueError(f"unknown {section} key(s) {unknown}; allowed: {sorted(allowed)}")
    spec = cls(**d)
    spec.validate()
    return spec
