"""The one place the golden tests touch the planner's request API (it changes with refactors; the documents
must not)."""
from __future__ import annotations


def build_request(kw: dict, server_args: list[str]):
    from gpcrun.plan import Request, parse_server_args
    return Request(pinned=parse_server_args(server_args), **kw)
