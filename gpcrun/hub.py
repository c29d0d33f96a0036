"""Hugging Face Hub refs: inspect and plan a model from its GGUF header before downloading it.

Refs (accepted wherever a MODEL is):
  hf://OWNER/REPO/path/FILE.gguf          one file (a split model's shard name means all N shards)
  hf://OWNER/REPO@REVISION/path/FILE.gguf   at a branch, tag, commit or refs/pr/N
  OWNER/REPO:QUANT  (or hf://OWNER/REPO[@REV]:QUANT)   like llama.cpp's -hf: the .gguf whose name carries QUANT
  OWNER/REPO        (or hf://OWNER/REPO[@REV])         Q4_K_M, else Q8_0, else the first model .gguf

Header reads (load_ref_header) use HTTP range requests, never the whole file: a 512 KiB prefix first, which
holds the whole header of most small models. A bigger header is walked with sparse reads: the contents of
arrays the parser summarises anyway (more than MAX_KEPT_ARRAY elements: scores, token types, and - found by
probing where the string chain ends instead of reading it - vocabularies and merges) are skipped, so a
262k-token vocabulary costs ~1-2 MB instead of ~16 MB. Skipped arrays are rebuilt as same-length filler, so
every offset, size and count gpcrun reports is exact; the result is accepted only if it parses and reconciles
with the file size, else the header is read in full (growing the prefix geometrically, capped at 64 MiB).

The header (real bytes plus that filler, exactly header_bytes long) is cached under
$GPCRUN_CACHE/hub-headers/<repo>/<commit>/<file> (+ <file>.json), so a second inspect/plan of a ref costs
one revision check (none with HF_HUB_OFFLINE=1, or when the revision is a commit hash).

huggingface_hub does what it does well (HF_ENDPOINT, HF_TOKEN/auth headers, model_info, hf_hub_url,
hf_hub_download into the standard cache for download_model); requests does the ranged GETs.
"""
from __future__ import annotations

import bisect
import json
import os
import re
import struct
import sys
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from .errors import GGUFError, HubError
from .model import (GGML_QUANT_SIZES, MAX_KEPT_ARRAY, HeaderIncomplete, ModelInfo, assemble_model,
                    parse_header_bytes, shard_paths)
from .paths import cache_dir

KIB, MIB = 1024, 1024 * 1024
INITIAL_READ = 512 * KIB  # first range: the whole header of most small models
PROBE_READ = 64 * KIB  # one probe while looking for the end of a skipped string array
MAX_READAHEAD = 8 * MIB  # sequential reads grow geometrically up to this
MAX_HEADER_READ = 64 * MIB  # bytes read for one file's header before giving up
SKIP_MIN_BYTES = 512 * KIB  # probe for the end of a summarised string array when 8*count (its least size) is this big
MAX_PROBES = 96
_MAX_PROBE_STRING = 65535  # a string longer than this breaks the chain during probing (not an error)
DEFAULT_QUANTS = ("Q4_K_M", "Q8_0")  # llama.cpp's -hf default tags, in order
_NOT_MODEL = ("mmproj", "imatrix", "mtp-", "eagle3-", "dflash-", "dspark-")  # llama.cpp gguf_filename_is_model
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_NAME = r"\w(?:[\w.-]*\w)?"  # a hub owner or repo name: no leading/trailing '.' or '-' ("./x" is a local path)
_SHORT_RE = re.compile(rf"^(?P<repo>{_NAME}/{_NAME})(?::(?P<quant>[\w.-]+))?$")
_URI_RE = re.compile(rf"^(?P<repo>{_NAME}/{_NAME})(?:@(?P<rev>refs/pr/\d+|refs/convert/[\w.-]+|[^/:]+))?"
                     r"(?::(?P<quant>[\w.-]+)|/(?P<path>.+))?$")
_SPLIT_RE = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
_TAG_RE = re.compile(r"[-.]([A-Z0-9_]+)$", re.IGNORECASE)
_KEY_RE = re.compile(r"^[A-Za-z0-9_][\w.\-]*$")

# GGUF value types: fixed size ones (type -> bytes); 8 string, 9 array
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


# ----------------------------------------------------------------------------------------------- refs

@dataclass(frozen=True)
class HubRef:
    text: str
    repo: str
    revision: str | None  # None: the repo's default branch
    file: str | None  # a path in the repo (hf://...FILE.gguf), else chosen by quant
    quant: str | None


def is_hub_ref(arg: str | os.PathLike) -> bool:
    """True for hf://... and for OWNER/REPO[:QUANT] that is not an existing local path (nor a *.gguf name)."""
    s = str(arg)
    if os.path.exists(s):
        return False
    if s.startswith("hf://"):
        return True
    return bool(_SHORT_RE.match(s)) and not s.lower().endswith(".gguf")


def parse_ref(text: str) -> HubRef:
    s = str(text)
    if s.startswith("hf://"):
        body = s[len("hf://"):].strip("/")
        if body.startswith("models/"):
            body = body[len("models/"):]
        elif body.split("/", 1)[0] in ("datasets", "spaces", "buckets", "kernels"):
            raise HubError(f"{s}: only model repos are supported")
        m = _URI_RE.match(body)
        if not m:
            raise HubError(f"{s}: not a hub ref (hf://OWNER/REPO[@REVISION]/path/FILE.gguf)")
        path = m.group("path")
        if path is not None and not path.lower().endswith(".gguf"):
            raise HubError(f"{s}: a hf:// ref must name a .gguf file (or use OWNER/REPO:QUANT)")
        rev = unquote(m.group("rev")) if m.group("rev") else None
        return HubRef(s, m.group("repo"), rev, path, m.group("quant"))
    m = _SHORT_RE.match(s)
    if not m:
        raise HubError(f"{s}: not a hub ref (OWNER/REPO[:QUANT] or hf://OWNER/REPO/FILE.gguf)")
    return HubRef(s, m.group("repo"), None, None, m.group("quant"))


def quant_tag(path: str) -> str | None:
    """The quant tag of a GGUF file name, as llama.cpp reads it: Q4_K_M from model-Q4_K_M-00001-of-00002.gguf."""
    name = path.rsplit("/", 1)[-1]
    if not name.lower().endswith(".gguf"):
        return None
    stem = name[:-5]
    m = _SPLIT_RE.match(name)
    if m:
        stem = m.group("prefix").rsplit("/", 1)[-1]
    t = _TAG_RE.search(stem)
    return t.group(1).upper() if t else None


def _is_model_file(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name.lower().endswith(".gguf") and not any(x in name.lower() for x in _NOT_MODEL)


def _is_first_shard(path: str) -> bool:
    m = _SPLIT_RE.match(path.rsplit("/", 1)[-1])
    return m is None or int(m.group("no")) == 1


def _safe_path(repo: str, path: str) -> str:
    """A repo path that is safe to mirror under the cache (no absolute path, no '..')."""
    if path.startswith("/") or "\\" in path or any(part in ("", ".", "..") for part in path.split("/")):
        raise HubError(f"{repo}: refusing the file name {path!r}")
    return path


def _with_shards(repo: str, path: str, listing: list[str]) -> list[str]:
    files = [_safe_path(repo, f) for f in shard_paths(path)]
    have = set(listing)
    for i, f in enumerate(files):
        if f not in have:
            raise HubError(f"{repo}: split model {files[0]} is missing shard {i + 1} of {len(files)} ({f})")
    return files


def select_files(ref: HubRef, listing: list[str]) -> list[str]:
    """The repo paths (shard order) that ref names in a repo holding these files."""
    where = ref.repo + (f"@{ref.revision}" if ref.revision else "")
    ggufs = [p for p in listing if p.lower().endswith(".gguf")]
    if ref.file is not None:
        if ref.file not in listing:
            raise HubError(f"{where}: no file {ref.file!r}; .gguf files: " + (", ".join(ggufs) or "none"))
        return _with_shards(ref.repo, ref.file, listing)
    models = [p for p in ggufs if _is_model_file(p)]
    if not models:
        raise HubError(f"{where}: no .gguf model files in the repo" + (f" (only: {', '.join(ggufs)})" if ggufs else ""))
    for tag in ([ref.quant] if ref.quant else list(DEFAULT_QUANTS)):
        exact = re.compile(re.escape(tag) + r"[.-]", re.IGNORECASE)  # llama.cpp's pattern: Q4_K matches Q4_K.gguf, not Q4_K_M
        for match in (exact.search, lambda p, t=tag.lower(): t in p.lower()):
            hits = [p for p in models if match(p) and _is_first_shard(p)]
            if hits:
                singles = [p for p in hits if not _SPLIT_RE.match(p.rsplit("/", 1)[-1])]
                return _with_shards(ref.repo, (singles or hits)[0], listing)
    if ref.quant:
        tags = list(dict.fromkeys(t for t in map(quant_tag, models) if t))
        avail = ", ".join(tags) if tags else ", ".join(models)
        raise HubError(f"{where}: no .gguf file matches quant {ref.quant!r}; available: {avail}")
    return _with_shards(ref.repo, next(p for p in models if _is_first_shard(p)), listing)


# ----------------------------------------------------------------------------------------------- resolution

@dataclass(frozen=True)
class _Resolved:
    ref: HubRef
    commit: str
    files: list[str]
    online: bool  # False: from the cache (offline, or the hub unreachable)
    warning: str | None = None  # printed once the ref was served from the cache


def _offline() -> bool:
    try:
        from huggingface_hub import constants
        if constants.HF_HUB_OFFLINE:
            return True
    except ImportError:
        pass
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _endpoint() -> str:
    from huggingface_hub import constants
    return constants.ENDPOINT


def _headers_root() -> Path:
    return cache_dir() / "hub-headers"


def _repo_cache(repo: str) -> Path:
    return _headers_root() / repo


def _ref_key(revision: str | None) -> str:
    return quote(revision, safe="") if revision else "_default"


def _hf_repo_dir(repo: str) -> Path:
    from huggingface_hub import constants
    return Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _network_error(e: BaseException) -> bool:
    names = {c.__name__ for c in type(e).__mro__}
    return bool(names & {"TransportError", "ConnectionError", "ConnectError", "TimeoutException", "Timeout",
                         "RequestException", "OfflineModeIsEnabled", "TimeoutError"})


def _hub_error(where: str, e: BaseException, what: str = "") -> HubError:
    """One line for a huggingface_hub / network exception."""
    from huggingface_hub import utils as hfu
    ep = _endpoint()
    if isinstance(e, hfu.GatedRepoError):
        return HubError(f"{where}: gated repo on {ep}: accept its terms on the Hub and set HF_TOKEN")
    if isinstance(e, hfu.RepositoryNotFoundError):
        return HubError(f"{where}: repository not found on {ep} (a private or gated repo needs HF_TOKEN)")
    if isinstance(e, hfu.RevisionNotFoundError):
        return HubError(f"{where}: revision not found on {ep}")
    if isinstance(e, hfu.EntryNotFoundError):
        return HubError(f"{where}: {what or 'file'} not found")
    if isinstance(e, hfu.HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        return HubError(f"{where}: HTTP {status} from {ep}" + (f" ({what})" if what else ""))
    if _network_error(e):
        return HubError(f"{where}: cannot reach {ep} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    return HubError(f"{where}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def _remote_listing(ref: HubRef) -> tuple[str, list[str]]:
    from huggingface_hub import HfApi
    info = HfApi().model_info(ref.repo, revision=ref.revision)
    if not info.sha or not re.fullmatch(r"[0-9a-fA-F]{7,64}", info.sha):
        raise HubError(f"{ref.text}: {_endpoint()} returned no usable commit for the revision ({info.sha!r})")
    return info.sha, [s.rfilename for s in (info.siblings or [])]


def _save_listing(ref: HubRef, commit: str, listing: list[str]) -> None:
    try:
        d = _repo_cache(ref.repo)
        _atomic_write(d / ".refs" / _ref_key(ref.revision), commit.encode())
        _atomic_write(d / ".listing" / f"{commit}.json", json.dumps(listing).encode())
    except OSError:
        pass  # a read-only cache only costs the next run a revision check


def _cached_listing(ref: HubRef) -> tuple[str, list[str]] | None:
    """(commit, files) from gpcrun's header cache, else from the HF cache's refs and snapshot folder."""
    d = _repo_cache(ref.repo)
    commit = ref.revision if ref.revision and _COMMIT_RE.match(ref.revision) else None
    hf = _hf_repo_dir(ref.repo)
    if commit is None:
        for p in (d / ".refs" / _ref_key(ref.revision), hf / "refs" / (ref.revision or "main")):
            try:
                commit = p.read_text().strip()
                break
            except OSError:
                continue
    if not commit:
        return None
    try:
        return commit, json.loads((d / ".listing" / f"{commit}.json").read_text())
    except (OSError, ValueError):
        pass
    snap = hf / "snapshots" / commit
    if snap.is_dir():
        return commit, sorted(p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file())
    return None


def resolve(ref: HubRef) -> _Resolved:
    """The commit and the files of ref: one model_info call, or the cache offline (or when the hub is unreachable)."""
    if _offline():
        cached = _cached_listing(ref)
        if cached is None:
            raise HubError(f"{ref.text}: HF_HUB_OFFLINE=1 and nothing is cached for this ref"
                           " (run once online, or download it)")
        return _Resolved(ref, cached[0], select_files(ref, cached[1]), False)
    if ref.revision and _COMMIT_RE.match(ref.revision):  # a commit never changes: no revision check
        cached = _cached_listing(ref)
        if cached is not None:
            return _Resolved(ref, cached[0], select_files(ref, cached[1]), True)
    try:
        commit, listing = _remote_listing(ref)
    except HubError:
        raise
    except Exception as e:  # noqa: BLE001 - mapped to one line
        if _network_error(e) and not isinstance(e, _hf_http_error_types()):
            cached = _cached_listing(ref)
            if cached is not None:
                return _Resolved(ref, cached[0], select_files(ref, cached[1]), False,
                                 f"cannot reach {_endpoint()} ({type(e).__name__}); used the cached"
                                 f" {ref.repo}@{cached[0][:12]}")
        raise _hub_error(ref.text, e) from None
    _save_listing(ref, commit, listing)
    return _Resolved(ref, commit, select_files(ref, listing), True)


def _hf_http_error_types() -> tuple:
    from huggingface_hub import utils as hfu
    return (hfu.HfHubHTTPError,)


# ----------------------------------------------------------------------------------------------- ranged reads

class _RemoteFile:
    """Byte ranges of one remote file, fetched on demand with HTTP Range requests and kept (never re-read)."""

    def __init__(self, url: str, display: str, session, headers: dict) -> None:
        self.url = self.resolve_url = url
        self.display = display
        self.session = session
        self.headers = dict(headers)
        self.size: int | None = None
        self.starts: list[int] = []
        self.chunks: list[bytearray] = []
        self.bytes_read = 0
        self.requests = 0
        self.ranges = True
        self._last_end = -1
        self._readahead = PROBE_READ

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
                raise _WalkFailed(f"no bytes at {pos}")
            pos += got

    def read(self, pos: int, n: int) -> bytes:
        self.ensure(pos, n)
        s, b = self.segment(pos)
        out = bytes(b[pos - s:pos - s + n])
        if len(out) < n:
            raise _WalkFailed(f"read past end at {pos}")
        return out

    # -- HTTP

    def fetch(self, start: int, end: int) -> int:
        """GET bytes [start, end); returns how many arrived (0 past the end of the file)."""
        import requests

        if end <= start:
            return 0
        if self.bytes_read + (end - start) > MAX_HEADER_READ:
            raise HubError(f"{self.display}: the GGUF header needs more than {MAX_HEADER_READ // MIB} MiB of reads;"
                           " giving up (download the model instead)")
        if not self.ranges and start > 0:
            raise _WalkFailed("the server ignores Range")
        headers = dict(self.headers)
        if urlsplit(self.url).hostname != urlsplit(self.resolve_url).hostname:
            headers.pop("authorization", None)  # a signed CDN URL: the token stays on the hub
            headers.pop("Authorization", None)
        headers["Range"] = f"bytes={start}-{end - 1}"
        headers["Accept-Encoding"] = "identity"
        for attempt in range(3):
            try:
                r = self.session.get(self.url, headers=headers, stream=True, timeout=(15, 60), allow_redirects=True)
            except requests.RequestException as e:
                if attempt < 2:
                    time.sleep(0.5 * (attempt + 1))
                    continue
                raise HubError(f"{self.display}: cannot read from {_endpoint()} ({type(e).__name__})") from None
            self.requests += 1
            if r.status_code in (401, 403, 410) and self.url != self.resolve_url:  # an expired signed URL
                r.close()
                self.url = self.resolve_url
                headers = dict(self.headers, Range=headers["Range"], **{"Accept-Encoding": "identity"})
                continue
            if r.status_code >= 500 and attempt < 2:
                r.close()
                time.sleep(0.5 * (attempt + 1))
                continue
            break
        with r:
            if r.status_code == 416:
                total = _content_range_total(r.headers.get("Content-Range"))
                if total is not None:
                    self.size = total
                return 0
            if r.status_code in (401, 403):
                raise HubError(f"{self.display}: access denied (HTTP {r.status_code}); a private or gated repo needs"
                               " HF_TOKEN")
            if r.status_code == 404:
                raise HubError(f"{self.display}: not found (HTTP 404)")
            if r.status_code not in (200, 206):
                raise HubError(f"{self.display}: HTTP {r.status_code} on a range request")
            if r.status_code == 206:
                cr = r.headers.get("Content-Range", "")
                m = re.match(r"^bytes (\d+)-(\d+)/(\d+|\*)$", cr.strip())
                if not m or int(m.group(1)) != start:
                    raise HubError(f"{self.display}: unexpected Content-Range {cr!r} for bytes={start}-{end - 1}")
                if m.group(3) != "*":
                    self.size = int(m.group(3))
            else:  # 200: the server ignored Range; the body is the file from byte 0
                self.ranges = False
                if start != 0:
                    raise _WalkFailed("the server ignores Range")
                cl = r.headers.get("Content-Length")
                if cl and cl.isdigit() and "Content-Encoding" not in r.headers:
                    self.size = int(cl)
            if self.size is None:
                self.size = _head_size(self.session, self.resolve_url, self.headers)
            if self.size is None:
                raise HubError(f"{self.display}: the server reports no file size (no Content-Range total)")
            want = min(end, self.size) - start
            buf = bytearray()
            for chunk in r.iter_content(chunk_size=64 * KIB):
                buf += chunk
                if len(buf) >= want:
                    break
            del buf[want:]
            if r.history and r.url != self.url:  # keep the redirect target (a signed CDN URL) for later ranges
                self.url = r.url
        self.bytes_read += len(buf)
        if buf:
            self._insert(start, buf)
            self._last_end = start + len(buf)
        return len(buf)


def _content_range_total(cr: str | None) -> int | None:
    if cr and "/" in cr:
        t = cr.rsplit("/", 1)[1].strip()
        if t.isdigit():
            return int(t)
    return None


def _head_size(session, url: str, headers: dict) -> int | None:
    r = session.head(url, headers=dict(headers, **{"Accept-Encoding": "identity"}), allow_redirects=False, timeout=15)
    size = r.headers.get("X-Linked-Size") or (None if r.is_redirect else r.headers.get("Content-Length"))
    return int(size) if size and size.isdigit() else None


# ----------------------------------------------------------------------------------------------- sparse header walk

class _WalkFailed(Exception):
    """The sparse walk cannot go on (odd data, a guess that did not hold): read the header in full instead."""


@dataclass
class _Ctx:
    size: int
    kv_after: int  # KVs after the array being skipped
    tensor_count: int
    seen: set


def _u32(rf: _RemoteFile, pos: int) -> int:
    return struct.unpack("<I", rf.read(pos, 4))[0]


def _u64(rf: _RemoteFile, pos: int) -> int:
    return struct.unpack("<Q", rf.read(pos, 8))[0]


def _walk_strings(rf: _RemoteFile, pos: int, count: int, size: int) -> int:
    """Offset after `count` strings from pos, reading them (geometric readahead)."""
    unpack = struct.Struct("<Q").unpack_from
    while count:
        rf.ensure(pos, 8)
        s0, data = rf.segment(pos)
        p, lim = pos - s0, len(data)
        while count and p + 8 <= lim:
            n = unpack(data, p)[0]
            if p + 8 + n > lim:
                break
            p += 8 + n
            count -= 1
        pos = s0 + p
        if count:
            n = _u64(rf, pos)
            if pos + 8 + n > size:
                raise _WalkFailed("string past the end of the file")
            rf.ensure(pos, 8 + n)
    return pos


def _walk_available(rf: _RemoteFile, pos: int, count: int) -> tuple[int, int]:
    """(strings, offset) walked from pos through bytes already fetched, without fetching."""
    i = rf._covering(pos)
    if i < 0:
        return 0, pos
    s0, data = rf.starts[i], rf.chunks[i]
    unpack = struct.Struct("<Q").unpack_from
    p, lim, k = pos - s0, len(data), 0
    while k < count and p + 8 <= lim:
        n = unpack(data, p)[0]
        if p + 8 + n > lim:
            break
        p += 8 + n
        k += 1
    return k, s0 + p


def _plausible_key(rf: _RemoteFile, p: int, ctx: _Ctx) -> tuple[str, int] | None:
    n = _u64(rf, p)
    if not 1 <= n <= 256 or p + 8 + n > ctx.size:
        return None
    try:
        key = rf.read(p + 8, n).decode("ascii")
    except UnicodeDecodeError:
        return None
    if not _KEY_RE.match(key):
        return None
    return key, p + 8 + n


def _plausible_next(rf: _RemoteFile, q: int, ctx: _Ctx) -> bool:
    """Does the header plausibly go on at q after a skipped array (the next KVs, or the tensor infos)?"""
    try:
        p = q
        for depth in range(min(2, ctx.kv_after)):
            k = _plausible_key(rf, p, ctx)
            if k is None or "." not in k[0] or k[0] in ctx.seen:
                return False
            p = k[1]
            vtype = _u32(rf, p)
            p += 4
            if vtype in _FIXED:
                p += _FIXED[vtype]
            elif vtype == _STRING:
                n = _u64(rf, p)
                p += 8 + n
            elif vtype == _ARRAY:
                etype, count = struct.unpack("<IQ", rf.read(p, 12))
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
        k = _plausible_key(rf, p, ctx)  # the first tensor info
        if k is None:
            return False
        p = k[1]
        n_dims = _u32(rf, p)
        if not 1 <= n_dims <= 4:
            return False
        dims = struct.unpack(f"<{n_dims}Q", rf.read(p + 4, 8 * n_dims))
        ttype = _u32(rf, p + 4 + 8 * n_dims)
        return all(0 < d < (1 << 40) for d in dims) and ttype in GGML_QUANT_SIZES
    except (_WalkFailed, KeyError, struct.error):
        return False


def _classify(rf: _RemoteFile, x: int, ctx: _Ctx) -> tuple[str, int | None]:
    """Look at the bytes fetched from x: inside the string array ("in"), past it ("out"), or its end ("end", q)."""
    s0, data = rf.segment(x)
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
        if _plausible_next(rf, s0 + q, ctx):
            return "end", s0 + q
    return "in", None  # a long string inside the array, most likely


def _find_strings_end(rf: _RemoteFile, s: int, count: int, ctx: _Ctx) -> int | None:
    """End offset of a string array of `count` strings at s, found by probing instead of reading, or None."""
    size = ctx.size
    k, p = _walk_available(rf, s, count)
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
            raise _WalkFailed("too many probes")
        x = max(p, min(x, size - 1))
        rf.ensure(x, min(width, size - x))
        return _classify(rf, x, ctx)

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


def _sparse_header(rf: _RemoteFile) -> tuple[bytearray, bool]:
    """The header rebuilt from sparse reads: real bytes, except summarised arrays' contents (filler of the
    same length). Returns (header, skipped_any). Raises _WalkFailed when the walk cannot go on."""
    size = rf.size
    head = rf.read(0, 24)
    if head[:4] != b"GGUF":
        raise _WalkFailed("bad magic")
    version = struct.unpack_from("<I", head, 4)[0]
    if version & 0xFFFF == 0 or version not in (2, 3):
        raise _WalkFailed("big-endian or unsupported version")  # the full read handles (and reports) these
    tensor_count, kv_count = struct.unpack_from("<QQ", head, 8)
    if kv_count > size // 13 or tensor_count > size // 24:
        raise _WalkFailed("absurd counts")
    pos, alignment = 24, 32
    fills: list[tuple[int, int, str, int]] = []
    seen: set = set()

    def rd_str(p: int) -> tuple[bytes, int]:
        n = _u64(rf, p)
        if p + 8 + n > size:
            raise _WalkFailed("string past the end")
        return rf.read(p + 8, n), p + 8 + n

    for i in range(kv_count):
        key, pos = rd_str(pos)
        seen.add(key.decode("utf-8", errors="replace"))
        vtype = _u32(rf, pos)
        pos += 4
        if vtype in _FIXED:
            v = rf.read(pos, _FIXED[vtype])
            if key == b"general.alignment" and vtype == 4:
                alignment = struct.unpack("<I", v)[0] or 32
            pos += _FIXED[vtype]
        elif vtype == _STRING:
            _, pos = rd_str(pos)
        elif vtype == _ARRAY:
            etype, count = struct.unpack("<IQ", rf.read(pos, 12))
            pos += 12
            if etype in _FIXED:
                nbytes = count * _FIXED[etype]
                if pos + nbytes > size:
                    raise _WalkFailed("array past the end")
                if count <= MAX_KEPT_ARRAY:
                    rf.ensure(pos, nbytes)
                else:
                    fills.append((pos, nbytes, "fixed", count))
                pos += nbytes
            elif etype == _STRING:
                if count > (size - pos) // 8:
                    raise _WalkFailed("string array past the end")
                if count <= MAX_KEPT_ARRAY:
                    pos = _walk_strings(rf, pos, count, size)
                else:
                    end = None
                    if 8 * count >= SKIP_MIN_BYTES:
                        end = _find_strings_end(rf, pos, count, _Ctx(size, kv_count - i - 1, tensor_count, seen))
                    if end is None:
                        end = _walk_strings(rf, pos, count, size)
                    fills.append((pos, end - pos, "strings", count))
                    pos = end
            else:
                raise _WalkFailed("unsupported array type")
        else:
            raise _WalkFailed("unknown value type")
    if alignment & (alignment - 1):
        raise _WalkFailed("odd alignment")
    for _ in range(tensor_count):
        _, pos = rd_str(pos)
        n_dims = _u32(rf, pos)
        if n_dims > 4:
            raise _WalkFailed("n_dims")
        rf.ensure(pos, 4 + 8 * n_dims + 12)
        pos += 4 + 8 * n_dims + 12
    data_start = pos + (-pos % alignment)
    hlen = data_start if tensor_count else min(data_start, size)
    if hlen > size:
        raise _WalkFailed("header past the end")
    rf.ensure(pos, hlen - pos)  # alignment padding
    buf = bytearray(hlen)
    for s0, chunk in zip(rf.starts, rf.chunks):
        if s0 < hlen:
            n = min(len(chunk), hlen - s0)
            buf[s0:s0 + n] = chunk[:n]
    for start, nbytes, kind, count in fills:
        buf[start:start + nbytes] = _filler(nbytes, kind, count)
    return buf, bool(fills)


def _filler(nbytes: int, kind: str, count: int) -> bytes:
    """Same-length stand-in for a summarised array's contents: zeros, or `count` equal strings of 'x'."""
    if kind == "fixed":
        return bytes(nbytes)
    q, r = divmod(nbytes - 8 * count, count)
    one = struct.pack("<Q", q) + b"x" * q
    return one * (count - 1) + struct.pack("<Q", q + r) + b"x" * (q + r)


def _fetch_header(rf: _RemoteFile, display: str, shard: int) -> tuple[bytes, tuple, bool]:
    """(header bytes, parsed part, synthetic) for one remote GGUF file."""
    try:
        return _fetch_header_unchecked(rf, display, shard)
    except _WalkFailed as e:
        raise HubError(f"{display}: unexpected answer to a range request ({e})") from None


def _fetch_header_unchecked(rf: _RemoteFile, display: str, shard: int) -> tuple[bytes, tuple, bool]:
    rf.fetch(0, INITIAL_READ)
    size = rf.size
    if not rf.starts:
        raise GGUFError(display, "empty file, not a GGUF file")
    s0, data = rf.segment(0)
    try:
        part = parse_header_bytes(bytes(data), size, display, shard)
        return _prefix(rf, part[2].header_bytes), part, False
    except HeaderIncomplete:
        pass
    version = struct.unpack_from("<I", data, 4)[0] if len(data) >= 8 else 0
    if version & 0xFFFF == 0 and version:
        version = struct.unpack_from(">I", data, 4)[0]
    if data[:4] != b"GGUF" or version not in (2, 3):  # not GGUF at all (an error page, an LFS pointer...):
        parse_header_bytes(bytes(data), len(data), display, shard)  # raises model.py's own error, now
        raise GGUFError(display, "not a GGUF file")
    if rf.ranges:
        try:
            buf, synthetic = _sparse_header(rf)
            part = parse_header_bytes(bytes(buf), size, display, shard)
            if part[2].reconciled and part[2].header_bytes == len(buf):
                return bytes(buf), part, synthetic
        except (_WalkFailed, GGUFError, KeyError, struct.error):
            pass
    # In full: grow the prefix geometrically (keeping what was read) until the header parses.
    n = INITIAL_READ
    while True:
        n = min(n * 2, size)
        if rf.ranges:
            rf.ensure(0, n)
        else:
            _prefix(rf, n)
        data = rf.segment(0)[1]
        try:
            part = parse_header_bytes(bytes(data[:n]), size, display, shard)
            return _prefix(rf, part[2].header_bytes), part, False
        except HeaderIncomplete:
            if n >= size:
                raise


def _prefix(rf: _RemoteFile, n: int) -> bytes:
    """The first n bytes of the file (a fresh GET from byte 0 when the server ignores Range)."""
    data = rf.segment(0)[1]
    if len(data) >= n:
        return bytes(data[:n])
    if rf.ranges:
        return rf.read(0, n)
    rf.starts, rf.chunks = [], []
    rf.fetch(0, n)
    return bytes(rf.segment(0)[1][:n])


# ----------------------------------------------------------------------------------------------- header cache

def _cache_paths(repo: str, commit: str, file: str) -> tuple[Path, Path]:
    h = _repo_cache(repo) / commit / file
    return h, h.with_name(h.name + ".json")


def _read_cache(repo: str, commit: str, file: str, shard: int) -> tuple[tuple, dict] | None:
    hpath, mpath = _cache_paths(repo, commit, file)
    try:
        meta = json.loads(mpath.read_text())
        header = hpath.read_bytes()
        if len(header) != meta["header_bytes"]:
            return None
        return parse_header_bytes(header, meta["file_size_bytes"], str(hpath), shard), meta
    except (OSError, ValueError, KeyError, TypeError, GGUFError):
        return None


def _write_cache(repo: str, commit: str, file: str, header: bytes, meta: dict) -> Path | None:
    hpath, mpath = _cache_paths(repo, commit, file)
    try:
        _atomic_write(hpath, header)
        _atomic_write(mpath, json.dumps(meta, indent=1).encode())
        return hpath
    except OSError as e:
        print(f"gpcrun: warning: cannot cache the header of {file} under {hpath.parent} ({e.strerror or e})",
              file=sys.stderr)
        return None


def _hf_cached_file(repo: str, commit: str, file: str) -> str | None:
    """The complete file when download_model (hf_hub_download) already put it in the HF cache."""
    p = _hf_repo_dir(repo) / "snapshots" / commit / file
    return str(p) if p.is_file() else None


def _local_part(path: str, shard: int) -> tuple:
    size = os.path.getsize(path)
    n = INITIAL_READ
    with open(path, "rb") as f:
        while True:
            f.seek(0)
            buf = f.read(min(n, size))
            try:
                return parse_header_bytes(buf, size, path, shard)
            except HeaderIncomplete:
                if n >= size:
                    raise
                n *= 4


# ----------------------------------------------------------------------------------------------- API

def _session_and_headers():
    import requests
    from huggingface_hub.utils import build_hf_headers
    from . import __version__
    s = requests.Session()
    return s, build_hf_headers(library_name="gpcrun", library_version=__version__)


def _display(ref: HubRef, file: str) -> str:
    return f"hf://{ref.repo}" + (f"@{ref.revision}" if ref.revision else "") + f"/{file}"


def load_ref_header(ref: str) -> tuple[ModelInfo, dict]:
    """Read the GGUF header(s) of a hub ref without downloading the weights.

    Returns (ModelInfo, hub info). The ModelInfo's paths are the cached header files (exactly header_bytes
    long, so header_sha256 works on them) or, when download_model already fetched the model, the HF cache's
    files. hub info: {"ref", "repo", "revision", "commit", "files", "file_sizes", "bytes_read", "requests",
    "cached", "sources", "synthetic"}: bytes_read/requests are what this call read over HTTP (0 from the cache)."""
    r = parse_ref(ref)
    res = resolve(r)
    session = headers = None
    parts, paths, sources, sizes = [], [], [], []
    bytes_read = requests_made = 0
    synthetic = False
    from huggingface_hub import hf_hub_url
    for i, file in enumerate(res.files):
        cached = _read_cache(r.repo, res.commit, file, i)
        if cached is not None:
            part, meta = cached
            synthetic = synthetic or bool(meta.get("synthetic"))
            parts.append(part), paths.append(part[2].path), sources.append("header-cache")
            sizes.append(part[2].file_size_bytes)
            continue
        local = _hf_cached_file(r.repo, res.commit, file)
        if local is not None:
            part = _local_part(local, i)
            parts.append(part), paths.append(local), sources.append("hf-cache"), sizes.append(part[2].file_size_bytes)
            continue
        if not res.online:
            raise HubError(f"{r.text}: " + ("HF_HUB_OFFLINE=1" if _offline() else f"cannot reach {_endpoint()}")
                           + f" and the header of {file} is not cached (run once online, or download it)")
        if session is None:
            session, headers = _session_and_headers()
        display = _display(r, file)
        rf = _RemoteFile(hf_hub_url(r.repo, file, revision=res.commit), display, session, headers)
        try:
            header, part, synth = _fetch_header(rf, display, i)
        finally:
            bytes_read += rf.bytes_read
            requests_made += rf.requests
        synthetic = synthetic or synth
        meta = {"schema": "gpcrun.hub-header/1", "repo": r.repo, "commit": res.commit, "file": file,
                "file_size_bytes": part[2].file_size_bytes, "header_bytes": len(header), "bytes_read": rf.bytes_read,
                "requests": rf.requests, "synthetic": synth, "fetched_unix": int(time.time())}
        hpath = _write_cache(r.repo, res.commit, file, header, meta)
        if hpath is not None:
            part = (part[0], part[1], replace(part[2], path=str(hpath)))
        parts.append(part), paths.append(part[2].path), sources.append("hub"), sizes.append(part[2].file_size_bytes)
    if session is not None:
        session.close()
    info = assemble_model(paths, parts)
    if res.warning:
        print(f"gpcrun: warning: {res.warning}", file=sys.stderr)
    hub = {"ref": r.text, "repo": r.repo, "revision": r.revision, "commit": res.commit, "files": list(res.files),
           "file_sizes": sizes, "bytes_read": bytes_read, "requests": requests_made,
           "cached": all(s != "hub" for s in sources), "sources": sources, "synthetic": synthetic}
    return info, hub


def describe(hub: dict) -> str:
    """One line for text output: where the header came from and what it cost."""
    from .fmt import human_bytes
    files = hub["files"]
    what = files[0] + (f" (+{len(files) - 1} more shard(s))" if len(files) > 1 else "")
    rev = f" (revision {hub['revision']})" if hub.get("revision") else ""
    total = sum(hub.get("file_sizes") or [])
    if hub["cached"]:
        how = "header from the local cache, nothing downloaded"
    else:
        how = (f"header read with {hub['bytes_read']:,} bytes ({human_bytes(hub['bytes_read'])}) of"
               f" {human_bytes(total)} in {hub['requests']} range request(s)")
    return f"hub: {hub['repo']}@{hub['commit'][:12]}{rev}: {what}; {how}"


def hub_argv(argv: tuple[str, ...], info: ModelInfo, hub: dict) -> tuple[str, ...]:
    """A plan's llama-server argv with `-m <cached header>` replaced by llama.cpp's own hub flags."""
    out = list(argv)
    for i in range(len(out) - 1):
        if out[i] == "-m" and out[i + 1] == info.path:
            out[i:i + 2] = ["--hf-repo", hub["repo"], "--hf-file", hub["files"][0]]
            break
    return tuple(out)


def download_model(ref: str) -> str:
    """Download a hub ref (all shards of a split model) into the standard HF cache; the first shard's path.

    hf_hub_download: HF_HOME / HF_HUB_CACHE, HF_TOKEN, HF_HUB_OFFLINE (then the cache or an error), a progress
    bar on a terminal; files already in the cache are not downloaded again."""
    from huggingface_hub import hf_hub_download
    r = parse_ref(ref)
    res = resolve(r)
    out = []
    for file in res.files:
        try:
            out.append(hf_hub_download(r.repo, file, revision=res.commit))
        except Exception as e:  # noqa: BLE001 - mapped to one line
            if type(e).__name__ in ("LocalEntryNotFoundError", "OfflineModeIsEnabled"):
                raise HubError(f"{r.text}: {file} is not in the HF cache and HF_HUB_OFFLINE=1 (or the hub is"
                               " unreachable)") from None
            raise _hub_error(_display(r, file), e, file) from None
    if res.warning:
        print(f"gpcrun: warning: {res.warning}", file=sys.stderr)
    return out[0]
