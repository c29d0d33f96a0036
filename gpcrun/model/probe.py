"""Where does a summarised string array end? Found by probing a few windows of a byte source (source.py) instead
of reading the array: a vocabulary of 262k strings is ~16 MB, a probe 64 KiB. Used by the sparse walk (sparse.py);
every guess is checked against what follows the array (the next keys, or the first tensor info).
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from .ggml import GGML_MAX_DIMS, GGML_QUANT_SIZES
from .ggml import FIXED_SIZES as _FIXED
from .ggml import GGUF_ARRAY as _ARRAY
from .ggml import GGUF_STRING as _STRING
from .source import MIB, PROBE_READ, ByteSource, WalkFailed
from .source import u32 as _u32
from .source import u64 as _u64

MAX_PROBES = 96
_MAX_PROBE_STRING = 65535  # a string longer than this breaks the chain during probing (not an error)
_KEY_RE = re.compile(r"^[A-Za-z0-9_][\w.\-]*$")


@dataclass
class SkipContext:
    """What a guessed end of the array is checked against: the file size and what the header holds after it."""

    size: int
    kv_after: int  # KVs after the array being skipped
    tensor_count: int
    seen: set


def _walk_available(src: ByteSource, pos: int, count: int) -> tuple[int, int]:
    """(strings, offset) walked from pos through bytes already fetched, without fetching."""
    i = src._covering(pos)
    if i < 0:
        return 0, pos
    s0, data = src.starts[i], src.chunks[i]
    unpack = struct.Struct("<Q").unpack_from
    p, lim, k = pos - s0, len(data), 0
    while k < count and p + 8 <= lim:
        n = unpack(data, p)[0]
        if p + 8 + n > lim:
            break
        p += 8 + n
        k += 1
    return k, s0 + p


def _plausible_key(src: ByteSource, p: int, ctx: SkipContext) -> tuple[str, int] | None:
    n = _u64(src, p)
    if not 1 <= n <= 256 or p + 8 + n > ctx.size:
        return None
    try:
        key = src.read(p + 8, n).decode("ascii")
    except UnicodeDecodeError:
        return None
    if not _KEY_RE.match(key):
        return None
    return key, p + 8 + n


def _plausible_next(src: ByteSource, q: int, ctx: SkipContext) -> bool:
    """Does the header plausibly go on at q after a skipped array (the next KVs, or the tensor infos)?"""
    try:
        p = q
        for depth in range(min(2, ctx.kv_after)):
            k = _plausible_key(src, p, ctx)
            if k is None or "." not in k[0] or k[0] in ctx.seen:
                return False
            p = k[1]
            vtype = _u32(src, p)
            p += 4
            if vtype in _FIXED:
                p += _FIXED[vtype]
            elif vtype == _STRING:
                n = _u64(src, p)
                p += 8 + n
            elif vtype == _ARRAY:
                etype, count = struct.unpack("<IQ", src.read(p, 12))
                p += 12
                if etype in _FIXED:
                    p += count * _FIXED[etype]
                elif etype == _STRING:
                    return count <= (ctx.size - p) // 8  # cannot skip further cheaply: good enough
                else:
                    return False
            else:
                return False
            if p > ctx.size:
                return False
        if ctx.kv_after > 2:
            return True
        if ctx.tensor_count == 0:
            return ctx.kv_after > 0 or q == ctx.size
        k = _plausible_key(src, p, ctx)  # the first tensor info
        if k is None:
            return False
        p = k[1]
        n_dims = _u32(src, p)
        if not 1 <= n_dims <= GGML_MAX_DIMS:
            return False
        dims = struct.unpack(f"<{n_dims}Q", src.read(p + 4, 8 * n_dims))
        ttype = _u32(src, p + 4 + 8 * n_dims)
        return all(0 < d < (1 << 40) for d in dims) and ttype in GGML_QUANT_SIZES
    except (WalkFailed, KeyError, struct.error):
        return False


def _classify(src: ByteSource, x: int, ctx: SkipContext) -> tuple[str, int | None]:
    """Look at the bytes fetched from x: inside the string array ("in"), past it ("out"), or its end ("end", q)."""
    s0, data = src.segment(x)
    off, lim = x - s0, len(data)
    at_eof = s0 + lim >= ctx.size
    unpack = struct.Struct("<Q").unpack_from
    sync = None
    for c in range(off, min(off + 4096, lim - 8)):
        if data[c + 2:c + 8] != b"\0\0\0\0\0\0":
            continue
        p, steps, nonempty, why = c, 0, 0, "steps"
        while steps < 48:
            if p + 8 > lim:
                why = "lim"
                break
            n = unpack(data, p)[0]
            if n > _MAX_PROBE_STRING:
                why = "break"
                break
            if p + 8 + n > lim:
                why = "lim"
                break
            nonempty += n > 0
            p += 8 + n
            steps += 1
        if (why == "steps" or (why == "lim" and steps >= 4) or (why == "break" and steps >= 8)) \
                and nonempty * 2 >= steps:
            sync = c
            break
    if sync is None:
        return "out", None
    p = sync
    trail: list[int] = []
    while True:
        if p + 8 > lim:
            if at_eof and s0 + p == ctx.size and ctx.kv_after == 0 and ctx.tensor_count == 0:
                return "end", ctx.size
            return "in", None
        n = unpack(data, p)[0]
        if n > _MAX_PROBE_STRING or (p + 8 + n > lim and at_eof):
            break
        if p + 8 + n > lim:
            return "in", None
        trail.append(p)
        if len(trail) > 8:
            del trail[0]
        p += 8 + n
    for q in reversed(trail):
        if _plausible_next(src, s0 + q, ctx):
            return "end", s0 + q
    return "in", None  # a long string inside the array, most likely


def find_strings_end(src: ByteSource, s: int, count: int, ctx: SkipContext) -> int | None:
    """End offset of a string array of `count` strings at s, found by probing instead of reading, or None."""
    size = ctx.size
    k, p = _walk_available(src, s, count)
    if k == count:
        return p
    lo = p + 8 * (count - k)  # every string takes at least its 8-byte length
    if lo > size:
        return None
    W = PROBE_READ
    max_step = max(W, min(MIB, 4 * count - W))  # a following array of `count` 4-byte values cannot be jumped over
    probes = 0

    def probe(x: int, width: int = W) -> tuple[str, int | None]:
        nonlocal probes
        probes += 1
        if probes > MAX_PROBES:
            raise WalkFailed("too many probes")
        x = max(p, min(x, size - 1))
        src.ensure(x, min(width, size - x))
        return _classify(src, x, ctx)

    state, q = probe(lo)
    if state == "end":
        return q
    if state == "out":
        return None
    a, step, b = lo, 4 * W, None
    while b is None:
        x = a + step
        if x + W > size:
            x = max(a + 1, size - W)
            if x <= a:
                return None
        state, q = probe(x)
        if state == "end":
            return q
        if state == "out":
            b = x
        elif x + W >= size:
            return None  # a chain up to the end of the file, not ending where the header could
        else:
            a, step = x, min(step * 2, max_step)
    while b - a > W:
        m = (a + b) // 2
        state, q = probe(m)
        if state == "end":
            return q
        if state == "in":
            a = m
        else:
            b = m
    state, q = probe(a, b - a + W)
    return q if state == "end" else None
