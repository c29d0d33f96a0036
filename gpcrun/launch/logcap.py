"""llama-server's output, read from a pipe in bounded chunks, into a server.log of bounded size.

The child writes to a pipe; one pump thread reads it (64 KiB at a time) and hands each chunk to a `CappedLog`:
- `server.log` takes the first quarter of the cap (the load: arguments, devices, model, buffers);
- after that the output goes to `server.log.tail`, which becomes `server.log.tail.1` each time it reaches 3/8 of
  the cap (the previous .1 is dropped): the newest 3/8 .. 3/4 of the cap are always on disk, and the total never
  passes the cap;
- `close()` joins them into one file: head, a line saying how many bytes were left out, tail. A gpcrun killed
  with -9 leaves the three files as they were, each readable.

Consumers of the live stream (the console echo, the assertion scan) are listeners called with each chunk; the
last 64 KiB are kept in memory for classifying a death. A slow console never slows llama-server: the echo has
its own thread and a bounded buffer, and says how much it dropped.
"""
from __future__ import annotations

import codecs
import collections
import os
import sys
import threading
from pathlib import Path
from typing import Callable

from ..atomic import open_private, rotate

MIB = 1 << 20
DEFAULT_LOG_MAX_BYTES = 128 * MIB
READ_CHUNK_BYTES = 64 * 1024
TAIL_RING_BYTES = 64 * 1024


class CappedLog:
    """Append-only sink of at most `max_bytes` on disk: head + rotating tail (see the module doc)."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_LOG_MAX_BYTES) -> None:
        self.path = Path(path)
        self.max_bytes = max(4096, int(max_bytes))
        self.head_bytes = self.max_bytes // 4
        self.segment_bytes = (self.max_bytes - self.head_bytes) // 2
        self.tail_path = self.path.with_name(self.path.name + ".tail")
        self.old_tail_path = self.path.with_name(self.path.name + ".tail.1")
        self._lock = threading.Lock()
        self._listeners: list[Callable[[bytes], None]] = []
        self._ring = bytearray()
        self._head = open_private(self.path, "ab")
        self._head_size = self._head.tell()
        self._tail = None
        self._tail_size = 0
        self.dropped_bytes = 0  # output rotated away (left out of the final file)
        self.total_bytes = 0

    # ------------------------------------------------------------------ listeners and the in-memory tail

    def listen(self, fn: Callable[[bytes], None]) -> Callable[[], None]:
        """fn(chunk) for each chunk written from now on; returns the call that stops it."""
        with self._lock:
            self._listeners.append(fn)

        def stop() -> None:
            with self._lock:
                if fn in self._listeners:
                    self._listeners.remove(fn)
        return stop

    def recent_text(self) -> str:
        """The last 64 KiB written since `mark()` (what a death is classified on)."""
        with self._lock:
            return bytes(self._ring).decode(errors="replace")

    def mark(self) -> None:
        """Forget the in-memory tail (a new attempt starts)."""
        with self._lock:
            self._ring.clear()

    # ------------------------------------------------------------------ writing

    def write(self, data: bytes) -> None:
        with self._lock:
            self.total_bytes += len(data)
            self._ring += data
            if len(self._ring) > TAIL_RING_BYTES:
                del self._ring[:len(self._ring) - TAIL_RING_BYTES]
            listeners = list(self._listeners)
            self._write_disk(data)
        for fn in listeners:
            fn(data)

    def _write_disk(self, data: bytes) -> None:
        if self._head is not None and self._head_size < self.head_bytes:
            room = self.head_bytes - self._head_size
            self._head.write(data[:room])
            self._head.flush()
            self._head_size += min(room, len(data))
            data = data[room:]
        while data:
            if self._tail is None:
                self._tail = open_private(self.tail_path, "wb")
                self._tail_size = 0
            room = self.segment_bytes - self._tail_size
            part, data = data[:room], data[room:]
            self._tail.write(part)
            self._tail.flush()
            self._tail_size += len(part)
            if self._tail_size >= self.segment_bytes:
                self._tail.close()
                self._tail = None
                if self.old_tail_path.exists():
                    self.dropped_bytes += self.old_tail_path.stat().st_size
                rotate(self.tail_path, self.old_tail_path)

    def close(self) -> None:
        """Join head and tail into `path` (nothing to do when the head never filled)."""
        with self._lock:
            if self._tail is not None:
                self._tail.close()
                self._tail = None
            head = self._head
            self._head = None
            if head is None:
                return
            try:
                parts = [p for p in (self.old_tail_path, self.tail_path) if p.exists()]
                if parts:
                    head.write(f"\n=== gpcrun: {self.dropped_bytes} bytes of llama-server output left out here"
                               f" (server.log keeps the first {self.head_bytes} and the last bytes; cap"
                               f" {self.max_bytes} bytes, --log-max-mib) ===\n".encode())
                    for p in parts:
                        with open(p, "rb") as f:
                            while chunk := f.read(MIB):
                                head.write(chunk)
                        p.unlink()
            finally:
                head.close()


class Pump:
    """Reads a pipe until EOF in bounded chunks into a CappedLog (one daemon thread)."""

    def __init__(self, fd: int, sink: CappedLog) -> None:
        self.fd = fd
        self.sink = sink
        self.thread = threading.Thread(target=self._run, name="gpcrun-log-pump", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while True:
                try:
                    chunk = os.read(self.fd, READ_CHUNK_BYTES)
                except OSError:
                    break
                if not chunk:
                    break
                try:
                    self.sink.write(chunk)
                except OSError:
                    pass  # a full disk: the output is dropped, the child is never blocked on it
        finally:
            try:
                os.close(self.fd)
            except OSError:
                pass

    def join(self, timeout_s: float) -> None:
        self.thread.join(timeout_s)


class ConsoleEcho:
    """The live log on stderr from its own thread; at most `buffer_bytes` wait, older output beyond that is
    dropped with a line saying how much (a paused terminal never blocks llama-server)."""

    def __init__(self, write: Callable[[str], None] | None = None, buffer_bytes: int = 4 * MIB) -> None:
        self._write = write or _stderr_write
        self.buffer_bytes = buffer_bytes
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._dropped = 0
        self._cv = threading.Condition()
        self._closed = False
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character split by a read
        self.thread = threading.Thread(target=self._run, name="gpcrun-log-echo", daemon=True)
        self.thread.start()

    def __call__(self, chunk: bytes) -> None:
        with self._cv:
            self._chunks.append(chunk)
            self._size += len(chunk)
            while self._size > self.buffer_bytes and len(self._chunks) > 1:
                old = self._chunks.popleft()
                self._size -= len(old)
                self._dropped += len(old)
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._chunks and not self._closed:
                    self._cv.wait()
                if not self._chunks and self._closed:
                    return
                chunk = self._chunks.popleft()
                self._size -= len(chunk)
                dropped, self._dropped = self._dropped, 0
            try:
                if dropped:
                    self._write(f"\n[gpcrun: {dropped} bytes of llama-server output not shown: the console"
                                f" was slower than the server; server.log has them]\n")
                self._write(self._decoder.decode(chunk))
            except (OSError, ValueError):
                pass

    def close(self, timeout_s: float = 1.0) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self.thread.join(timeout_s)


def _stderr_write(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()
