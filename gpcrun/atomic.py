"""The one atomic writer: every state file, receipt, profile, header cache and run document goes through here.

A temp file in the same directory, fsync, os.replace, then fsync of the directory: a reader sees the old file or
the new one, whole, and a crash (kill -9, power loss) never leaves a partial file under the final name. The temp
file is created exclusively under a random name (O_EXCL | O_NOFOLLOW): a link planted in the directory is never
followed, and os.replace swaps the name itself. `mode=PRIVATE` (0600) for what only the user may read (run
directories); open_private appends to such a file the same way (never through a link).
"""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path


PRIVATE = 0o600
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def write_bytes_atomic(path: Path | str, data: bytes, *, durable: bool = True, mode: int | None = None) -> None:
    """durable=False skips the fsyncs (caches that can be fetched again); the rename is atomic either way."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # os.open with 0o666 keeps the umask's permissions (mkstemp would make every file 0600)
    tmp = str(path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666 if mode is None else mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        try:
            dfd = os.open(path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dfd)
        except OSError:
            pass
        finally:
            os.close(dfd)


def write_text_atomic(path: Path | str, text: str, *, durable: bool = True, mode: int | None = None) -> None:
    write_bytes_atomic(path, text.encode(), durable=durable, mode=mode)


def write_json_atomic(path: Path | str, doc: object, *, durable: bool = True, mode: int | None = None) -> None:
    write_text_atomic(path, json.dumps(doc, indent=2, default=str), durable=durable, mode=mode)


def rotate(path: Path | str, to: Path | str) -> None:
    """A log segment renamed over the previous one (launch/logcap.py): the name `to` holds the old segment or the
    new one, whole; not a document write (nothing is synced)."""
    os.replace(path, to)


def open_private(path: Path | str, mode: str = "a"):
    """Open for appending ("a" or "ab"), created 0600 if new; a symbolic link at path is refused (OSError)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | _NOFOLLOW, PRIVATE)
    return os.fdopen(fd, mode)


def append_json_line(path: Path | str, row) -> bool:
    """One JSON document as a line of a private log (open_private); False when the disk refuses it."""
    try:
        with open_private(path, "a") as f:
            f.write(json.dumps(row) + "\n")
        return True
    except OSError:
        return False


def read_json_bounded(path: Path | str, max_bytes: int = 1 << 20):
    """A small JSON document gpcrun wrote itself, never following a planted link, at most max_bytes read
    (ValueError past it or when it is not JSON; OSError when it cannot be opened)."""
    import json
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"{path}: over {max_bytes} bytes")
    return json.loads(data)
