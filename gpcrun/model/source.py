"""A random-access byte source: byte ranges of one file, fetched on demand and kept (never re-read).

The sparse header walk (sparse.py) reads a file only through this interface, so it does not know where the bytes
come from; a subclass supplies fetch() (gpcrun/hub/http.py: HTTP Range requests).
"""
from __future__ import annotations

import bisect
import struct

KIB, MIB = 1024, 1024 * 1024
PROBE_READ = 64 * KIB  # one probe while looking for the end of a skipped string array
MAX_READAHEAD = 8 * MIB  # sequential reads grow geometrically up to this


class WalkFailed(Exception):
    """The sparse walk cannot go on (odd data, a guess that did not hold): read the header in full instead."""


class ByteSource:
    """The held bytes are sorted, merged segments (starts[i], chunks[i]); size is the file's size once known.

    A subclass implements fetch(start, end): get bytes [start, end), hand them to _insert (and set _last_end to
    the end of what arrived), set size, and return how many arrived (0 past the end of the file). ranges=False
    says the source ignores ranges: only a read from byte 0 works, and fetch raises WalkFailed for any other."""

    def __init__(self) -> None:
        self.size: int | None = None
        self.starts: list[int] = []
        self.chunks: list[bytearray] = []
        self.ranges = True
        self._last_end = -1
        self._readahead = PROBE_READ

    def fetch(self, start: int, end: int) -> int:
        raise NotImplementedError

    # -- segments

    def _covering(self, pos: int) -> int:
        """Index of the segment holding pos, or -1."""
        i = bisect.bisect_right(self.starts, pos) - 1
        if i >= 0 and pos < self.starts[i] + len(self.chunks[i]):
            return i
        return -1

    def _insert(self, start: int, data: bytes) -> None:
        """Add a fetched gap (never overlapping what is held) and merge it with segments it touches."""
        i = bisect.bisect_left(self.starts, start)
        self.starts.insert(i, start)
        self.chunks.insert(i, bytearray(data))
        if i + 1 < len(self.starts) and start + len(self.chunks[i]) >= self.starts[i + 1]:
            nxt_start, nxt = self.starts.pop(i + 1), self.chunks.pop(i + 1)
            self.chunks[i] += nxt[start + len(self.chunks[i]) - nxt_start:]
        if i > 0 and self.starts[i - 1] + len(self.chunks[i - 1]) >= start:
            prev_end = self.starts[i - 1] + len(self.chunks[i - 1])
            self.chunks[i - 1] += self.chunks[i][prev_end - start:]
            del self.starts[i], self.chunks[i]

    def segment(self, pos: int) -> tuple[int, bytearray]:
        i = self._covering(pos)
        if i < 0:
            raise KeyError(pos)
        return self.starts[i], self.chunks[i]

    def ensure(self, pos: int, n: int) -> None:
        """Make [pos, pos+n) (clipped to the file) available, fetching only the gaps (with readahead)."""
        end = pos + n if self.size is None else min(pos + n, self.size)
        while pos < end:
            i = self._covering(pos)
            if i >= 0:
                pos = self.starts[i] + len(self.chunks[i])
                continue
            nxt = bisect.bisect_right(self.starts, pos)
            limit = self.starts[nxt] if nxt < len(self.starts) else None
            if pos == self._last_end:  # sequential: grow geometrically
                self._readahead = min(self._readahead * 2, MAX_READAHEAD)
            else:
                self._readahead = PROBE_READ
            want = max(end, pos + self._readahead)
            if limit is not None:
                want = min(want, limit)
            if self.size is not None:
                want = min(want, self.size)
            got = self.fetch(pos, want)
            if got <= 0:
                raise WalkFailed(f"no bytes at {pos}")
            pos += got

    def read(self, pos: int, n: int) -> bytes:
        self.ensure(pos, n)
        s, b = self.segment(pos)
        out = bytes(b[pos - s:pos - s + n])
        if len(out) < n:
            raise WalkFailed(f"read past end at {pos}")
        return out


def u32(src: ByteSource, pos: int) -> int:
    return struct.unpack("<I", src.read(pos, 4))[0]


def u64(src: ByteSource, pos: int) -> int:
    return struct.unpack("<Q", src.read(pos, 8))[0]
