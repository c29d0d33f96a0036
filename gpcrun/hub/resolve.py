"""Resolving a hub ref to a commit and files, the caches, and the API: load_ref_header, describe, hub_argv,
download_model.

The header (real bytes plus the sparse walk's filler, exactly header_bytes long) is cached under
$GPCRUN_CACHE/hub-headers/<repo>/<commit>/<file> (+ <file>.json), so a second inspect/plan of a ref costs
one revision check (none with HF_HUB_OFFLINE=1, or when the revision is a commit hash).

huggingface_hub does what it does well (HF_ENDPOINT, HF_TOKEN/auth headers, model_info, hf_hub_url,
hf_hub_download into the standard cache for download_model).
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote

from ..atomic import write_bytes_atomic
from ..errors import GGUFError, HubError
from ..model import HeaderIncomplete, ModelInfo, assemble_model, parse_header_bytes
from ..model.sparse import INITIAL_READ
from ..paths import cache_dir
from .http import (_endpoint, _fetch_header, _hf_http_error_types, _hub_error, _network_error, _RemoteFile,
                   _session_and_headers)
from .refs import HubRef, parse_ref, select_files, select_sibling

_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class _Resolved:
    ref: HubRef
    commit: str
    files: list[str]
    online: bool  # False: from the cache (offline, or the hub unreachable)
    warning: str | None = None  # printed once the ref was served from the cache
    listing: tuple[str, ...] = ()  # every file of the repo at commit


def _offline() -> bool:
    try:
        from huggingface_hub import constants
        if constants.HF_HUB_OFFLINE:
            return True
    except ImportError:
        pass
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _headers_root() -> Path:
    return cache_dir() / "hub-headers"


def _repo_cache(repo: str) -> Path:
    return _headers_root() / repo


def _ref_key(revision: str | None) -> str:
    return quote(revision, safe="") if revision else "_default"


def _hf_repo_dir(repo: str) -> Path:
    from huggingface_hub import constants
    return Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))


def _remote_listing(ref: HubRef) -> tuple[str, list[str]]:
    from huggingface_hub import HfApi
    info = HfApi().model_info(ref.repo, revision=ref.revision)
    if not info.sha or not re.fullmatch(r"[0-9a-fA-F]{7,64}", info.sha):
        raise HubError(f"{ref.text}: {_endpoint()} returned no usable commit for the revision ({info.sha!r})")
    return info.sha, [s.rfilename for s in (info.siblings or [])]


def _save_listing(ref: HubRef, commit: str, listing: list[str]) -> None:
    try:
        d = _repo_cache(ref.repo)
        write_bytes_atomic(d / ".refs" / _ref_key(ref.revision), commit.encode(), durable=False)
        write_bytes_atomic(d / ".listing" / f"{commit}.json", json.dumps(listing).encode(), durable=False)
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
        return _Resolved(ref, cached[0], select_files(ref, cached[1]), False, listing=tuple(cached[1]))
    if ref.revision and _COMMIT_RE.match(ref.revision):  # a commit never changes: no revision check
        cached = _cached_listing(ref)
        if cached is not None:
            return _Resolved(ref, cached[0], select_files(ref, cached[1]), True, listing=tuple(cached[1]))
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
                                 f" {ref.repo}@{cached[0][:12]}", tuple(cached[1]))
        raise _hub_error(ref.text, e) from None
    _save_listing(ref, commit, listing)
    return _Resolved(ref, commit, select_files(ref, listing), True, listing=tuple(listing))


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
        write_bytes_atomic(hpath, header, durable=False)
        write_bytes_atomic(mpath, json.dumps(meta, indent=1).encode(), durable=False)
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

def _display(ref: HubRef, file: str) -> str:
    return f"hf://{ref.repo}" + (f"@{ref.revision}" if ref.revision else "") + f"/{file}"


def load_ref_header(ref: str) -> tuple[ModelInfo, dict]:
    """Read the GGUF header(s) of a hub ref without downloading the weights.

    Returns (ModelInfo, hub info). The ModelInfo's paths are the cached header files (exactly header_bytes
    long, so header_sha256 works on them) or, when download_model already fetched the model, the HF cache's
    files. hub info: {"ref", "repo", "revision", "commit", "files", "file_sizes", "bytes_read", "requests",
    "cached", "sources", "synthetic", "mmproj"}: bytes_read/requests are what this call read over HTTP (0 from the
    cache); mmproj is the projector llama-server's own -hf would load beside the model (refs.select_sibling)."""
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
           "cached": all(s != "hub" for s in sources), "sources": sources, "synthetic": synthetic,
           "mmproj": select_sibling(res.files[0], list(res.listing), "mmproj")}
    return info, hub


def describe(hub: dict) -> str:
    """One line for text output: where the header came from and what it cost."""
    from ..fmt import human_bytes
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
