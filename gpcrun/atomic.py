"""The one atomic writer: every state file, receipt, profile, header cache and run document goes through here.

A temp file in the same directory, fsync, os.replace, then fsync of the directory: a reader sees the old file or
the new one, whole, and a crash (kill -9, power loss) never leaves a partial file under the final name.
"""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path


def write_bytes_atomic(path: Path | str, data: bytes, *, durable: bool = True) -> None:
    """durable=False skips the fsyncs (caches that can be fetched again); the rename is atomic either way."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # os.open with 0o666 keeps the umask's permissions (mkstemp would make every file 0600)
    tmp = str(path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
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


def write_text_atomic(path: Path | str, text: str, *, durable: bool = True) -> None:
    write_bytes_atomic(path, text.encode(), durable=durable)


def write_json_atomic(path: Path | str, doc: object, *, durable: bool = True) -> None:
    write_text_atomic(path, json.dumps(doc, indent=2, default=str), durable=durable)
