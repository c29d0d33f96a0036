"""Reading /proc and /sys under an injectable root, and the "sources"/"unknown" plumbing of the host readers.

Every reader of hardware.host, hardware.cgroup and hardware.platform takes ``root`` (default "/") so tests point
it at captured trees (tests/data/host/*). Unknown values are None and carry a reason in ``unknown``; known values
name their source in ``sources``.
"""
from __future__ import annotations

import os
from types import MappingProxyType
from typing import Iterable, Mapping

EMPTY: Mapping[str, str] = MappingProxyType({})


def under(root: str, p: str) -> str:
    """Absolute path ``p`` of the live system, under ``root``."""
    return os.path.join(root, p.lstrip("/"))


def read_under(root: str, p: str) -> str | None:
    """The text of <root>/<p>, None when unreadable."""
    return read_abs(under(root, p))


def read_abs(p: str) -> str | None:
    try:
        with open(p, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def freeze(d: dict) -> Mapping[str, str]:
    return MappingProxyType(dict(d)) if d else EMPTY


def doc(obj, fields: Iterable[str]) -> dict:
    """The JSON document of a reader's result: the named fields, then "sources" and "unknown"."""
    out = {k: getattr(obj, k) for k in fields}
    out["sources"] = dict(obj.sources)
    out["unknown"] = dict(obj.unknown)
    return out
