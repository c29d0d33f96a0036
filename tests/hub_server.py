"""A local fake of the Hugging Face Hub endpoints that huggingface_hub 2.x and gpcrun.hub use (tests only).

Serves, on 127.0.0.1, model repos made of local files:

- GET  /api/models/{owner}/{repo}[/revision/{rev}]   JSON {id, sha, siblings, ...} (HfApi.model_info)
- GET  /api/models/{owner}/{repo}/tree/{rev}[/{path}] JSON [{type, path, size, oid, lfs}] (?recursive=true)
- GET  /api/models/{owner}/{repo}/refs                JSON {branches, tags} (llama.cpp's own -hf download)
- HEAD|GET /{owner}/{repo}/resolve/{rev}/{path}      the file, like the Hub: a .gguf (an LFS file) answers
  302 to a "CDN" URL on another host name (localhost instead of 127.0.0.1) carrying X-Repo-Commit,
  X-Linked-Size, X-Linked-Etag; other files answer 200 directly. Range requests get 206 + Content-Range.
- HEAD|GET /cdn/{sha256}                              the LFS blob, with Range.

Errors carry the Hub's X-Error-Code header (RepoNotFound, RevisionNotFound, EntryNotFound), which is what
huggingface_hub's hf_raise_for_status maps to RepositoryNotFoundError & co.

Counts every request and the body bytes sent per (repo, path), and records whether a request to the CDN
carried an Authorization header (it must not: a signed CDN URL must not receive the user's token).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

CHUNK = 1 << 16


@dataclass
class Repo:
    refs: dict[str, str] = field(default_factory=dict)  # branch/tag -> commit
    trees: dict[str, dict[str, Path]] = field(default_factory=dict)  # commit -> {path in repo: local file}
    gated: bool = False


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    auth: bool
    host: str


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.served: Counter = Counter()  # (repo, path) -> body bytes sent
        self.lock = threading.Lock()
        self._sha: dict[Path, str] = {}
        self._server: ThreadingHTTPServer | None = None
        self.port = 0
        self.ignore_ranges = False  # answer 200 with the whole file, like a server without Range support

    # ------------------------------------------------------------------ repos

    def add_repo(self, repo_id: str, files: dict[str, str | Path], *, tag: str | None = None) -> str:
        """Create (or push a new commit to) repo_id with these files; returns the commit sha."""
        repo = self.repos.setdefault(repo_id, Repo())
        tree = {p: Path(f) for p, f in files.items()}
        h = hashlib.sha1(repo_id.encode())
        for p in sorted(tree):
            h.update(p.encode() + b"\0" + str(tree[p].stat().st_size).encode() + b"\0")
        h.update(str(len(repo.trees)).encode())
        commit = h.hexdigest()
        repo.trees[commit] = tree
        repo.refs["main"] = commit
        if tag:
            repo.refs[tag] = commit
        return commit

    def sha256(self, path: Path) -> str:
        if path not in self._sha:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            self._sha[path] = h.hexdigest()
        return self._sha[path]

    def git_oid(self, path: Path) -> str:
        return hashlib.sha1(b"pointer " + self.sha256(path).encode()).hexdigest()

    # ------------------------------------------------------------------ server

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.served.clear()

    def bytes_served(self, repo: str | None = None, path: str | None = None) -> int:
        with self.lock:
            return sum(n for (r, p), n in self.served.items()
                       if (repo is None or r == repo) and (path is None or p == path))

    def file_requests(self) -> list[Request]:
        """Requests that fetched file bytes (resolve or CDN), HEADs included."""
        with self.lock:
            return [r for r in self.requests if "/resolve/" in r.path or r.path.startswith("/cdn/")]


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # quiet
        pass

    # ------------------------------------------------------------------ plumbing

    def _record(self) -> None:
        with self.fake.lock:
            self.fake.requests.append(Request(self.command, self.path, self.headers.get("Range"),
                                              "authorization" in {k.lower() for k in self.headers.keys()},
                                              self.headers.get("Host", "")))

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, doc, headers: dict | None = None) -> None:
        self._send(200, json.dumps(doc).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str | None, message: str, headers: dict | None = None) -> None:
        h = {"Content-Type": "application/json", "X-Error-Message": message, **(headers or {})}
        if code:
            h["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), h)

    def do_HEAD(self):
        self._dispatch()

    def do_GET(self):
        self._dispatch()

    def _dispatch(self) -> None:
        self._record()
        url = urlsplit(self.path)
        path = unquote(url.path)
        query = parse_qs(url.query)
        try:
            if path.startswith("/api/models/"):
                self._api(path[len("/api/models/"):], query)
            elif path.startswith("/cdn/"):
                self._cdn(path[len("/cdn/"):], query)
            elif "/resolve/" in path:
                self._resolve(path)
            else:
                self._error(404, None, "not found")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _repo(self, repo_id: str) -> Repo | None:
        repo = self.fake.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        if repo.gated and "authorization" not in {k.lower() for k in self.headers.keys()}:
            self._error(401, "GatedRepo", "Access to model is restricted")
            return None
        return repo

    def _commit(self, repo: Repo, rev: str) -> str | None:
        rev = unquote(rev)
        commit = repo.refs.get(rev) or (rev if rev in repo.trees else None)
        if commit is None:
            self._error(404, "RevisionNotFound", "Invalid rev id: " + rev)
        return commit

    # ------------------------------------------------------------------ API

    def _api(self, rest: str, query: dict) -> None:
        parts = rest.split("/")
        if len(parts) < 2:
            return self._error(404, None, "not found")
        repo_id = "/".join(parts[:2])
        repo = self._repo(repo_id)
        if repo is None:
            return
        tail = parts[2:]
        if not tail or tail[0] == "revision":
            commit = self._commit(repo, "/".join(tail[1:]) if tail else "main")
            if commit is None:
                return
            tree = repo.trees[commit]
            siblings = [{"rfilename": p} for p in sorted(tree)]
            if query.get("blobs") == ["True"] or query.get("blobs") == ["true"]:
                siblings = [{"rfilename": p, "size": f.stat().st_size, "blobId": self.fake.git_oid(f),
                             "lfs": {"size": f.stat().st_size, "sha256": self.fake.sha256(f), "pointerSize": 134}}
                            for p, f in sorted(tree.items())]
            return self._json({"_id": "x" * 24, "id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0],
                               "sha": commit, "private": False, "gated": "auto" if repo.gated else False,
                               "disabled": False, "downloads": 0, "likes": 0, "tags": ["gguf"],
                               "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z",
                               "siblings": siblings})
        if tail == ["refs"]:  # llama.cpp's common/hf-cache.cpp get_repo_commit: {"branches": [{name, targetCommit}]}
            branches = [{"name": n, "ref": "refs/heads/" + n, "targetCommit": c} for n, c in sorted(repo.refs.items())
                        if n == "main"]
            tags = [{"name": n, "ref": "refs/tags/" + n, "targetCommit": c} for n, c in sorted(repo.refs.items())
                    if n != "main"]
            return self._json({"branches": branches, "tags": tags, "converts": []})
        if tail[0] == "tree" and len(tail) >= 2:
            commit = self._commit(repo, tail[1])
            if commit is None:
                return
            sub = "/".join(tail[2:]).strip("/")
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            return self._json(self._tree(repo.trees[commit], sub, recursive))
        return self._error(404, None, "not found")

    def _tree(self, tree: dict[str, Path], sub: str, recursive: bool) -> list[dict]:
        prefix = sub + "/" if sub else ""
        out, dirs = [], set()
        for p, f in sorted(tree.items()):
            if not p.startswith(prefix):
                continue
            rel = p[len(prefix):]
            if "/" in rel:
                parts = rel.split("/")
                for i in range(1, len(parts) if recursive else 2):
                    if i < len(parts):
                        dirs.add(prefix + "/".join(parts[:i]))
                if not recursive:
                    continue
            size = f.stat().st_size
            entry = {"type": "file", "path": p, "size": size, "oid": self.fake.git_oid(f)}
            if p.endswith(".gguf"):
                entry["lfs"] = {"oid": self.fake.sha256(f), "size": size, "pointerSize": 134}
            out.append(entry)
        out += [{"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0}
                for d in sorted(dirs)]
        return out

    # ------------------------------------------------------------------ files

    def _resolve(self, path: str) -> None:
        m = re.match(r"^/([^/]+/[^/]+)/resolve/(refs/pr/\d+|[^/]+)/(.+)$", path)
        if not m:
            return self._error(404, None, "not found")
        repo_id, rev, fpath = m.groups()
        repo = self._repo(repo_id)
        if repo is None:
            return
        commit = self._commit(repo, rev)
        if commit is None:
            return
        f = repo.trees[commit].get(fpath)
        if f is None:
            return self._error(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit})
        size = f.stat().st_size
        if fpath.endswith(".gguf"):  # LFS: redirect to the "CDN" on another host name, like the Hub
            sha = self.fake.sha256(f)
            loc = (f"http://localhost:{self.fake.port}/cdn/{sha}?repo={quote(repo_id, safe='')}"
                   f"&path={quote(fpath, safe='')}&sig=fake")
            return self._send(302, b"", {"Location": loc, "X-Repo-Commit": commit, "X-Linked-Size": size,
                                         "X-Linked-Etag": f'"{sha}"', "ETag": f'"{self.fake.git_oid(f)}"',
                                         "Accept-Ranges": "bytes"})
        self._file(repo_id, fpath, f, {"X-Repo-Commit": commit, "ETag": f'"{self.fake.git_oid(f)}"'})

    def _cdn(self, sha: str, query: dict) -> None:
        repo_id = query.get("repo", [""])[0]
        fpath = query.get("path", [""])[0]
        repo = self.fake.repos.get(repo_id)
        f = None
        if repo is not None:
            for tree in repo.trees.values():
                if fpath in tree and self.fake.sha256(tree[fpath]) == sha:
                    f = tree[fpath]
        if f is None:
            return self._send(403, b"<Error>AccessDenied</Error>", {"Content-Type": "application/xml"})
        self._file(repo_id, fpath, f, {"ETag": f'"{sha}"'})

    def _file(self, repo_id: str, fpath: str, f: Path, headers: dict) -> None:
        size = f.stat().st_size
        rng = None if self.fake.ignore_ranges else self.headers.get("Range")
        start, end = 0, size - 1
        status = 200
        if rng:
            m = re.match(r"^bytes=(\d*)-(\d*)$", rng.strip())
            if not m or (not m.group(1) and not m.group(2)):
                return self._send(416, b"", {"Content-Range": f"bytes */{size}"})
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:  # suffix range
                start = max(0, size - int(m.group(2)))
            if start >= size or start > end:
                return self._send(416, b"", {"Content-Range": f"bytes */{size}"})
            status = 206
        n = end - start + 1
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(n))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        sent = 0
        try:
            with open(f, "rb") as fh:
                fh.seek(start)
                while sent < n:
                    chunk = fh.read(min(CHUNK, n - sent))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    sent += len(chunk)
        finally:
            with self.fake.lock:
                self.fake.served[(repo_id, fpath)] += sent


def env_for(hub: FakeHub, tmp: Path) -> dict[str, str]:
    """Environment for a gpcrun subprocess talking to this fake hub, with every cache under tmp."""
    env = dict(os.environ)
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN",
              "HUGGING_FACE_HUB_TOKEN", "GPCRUN_DEBUG"):
        env.pop(k, None)
    env.update({"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp / "hf-home"), "GPCRUN_CACHE": str(tmp / "gpcrun-cache"),
                "GPCRUN_HOME": str(tmp / "gpcrun-home"), "HF_HUB_DISABLE_TELEMETRY": "1",
                "HF_HUB_DISABLE_XET": "1", "NO_PROXY": "*", "no_proxy": "*"})
    return env
