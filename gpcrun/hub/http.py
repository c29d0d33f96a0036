"""Ranged HTTP against the hub: _RemoteFile (a byte source read with Range requests, redirects to a signed CDN
URL followed and kept), the session and auth headers, and one-line errors for huggingface_hub / network failures.
huggingface_hub gives HF_ENDPOINT and the HF_TOKEN headers; requests does the ranged GETs."""
from __future__ import annotations

import re
import time
from urllib.parse import urlsplit

from ..errors import HubError
from ..model.source import KIB, MIB, ByteSource, WalkFailed
from ..model.sparse import read_header

MAX_HEADER_READ = 64 * MIB  # bytes read for one file's header before giving up


def _endpoint() -> str:
    from huggingface_hub import constants
    return constants.ENDPOINT


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


def _hf_http_error_types() -> tuple:
    from huggingface_hub import utils as hfu
    return (hfu.HfHubHTTPError,)


def _session_and_headers():
    import requests
    from huggingface_hub.utils import build_hf_headers
    from .. import __version__
    s = requests.Session()
    return s, build_hf_headers(library_name="gpcrun", library_version=__version__)


class _RemoteFile(ByteSource):
    """Byte ranges of one remote file, fetched on demand with HTTP Range requests and kept (never re-read)."""

    def __init__(self, url: str, display: str, session, headers: dict) -> None:
        super().__init__()
        self.url = self.resolve_url = url
        self.display = display
        self.session = session
        self.headers = dict(headers)
        self.bytes_read = 0
        self.requests = 0

    def fetch(self, start: int, end: int) -> int:
        """GET bytes [start, end); returns how many arrived (0 past the end of the file)."""
        import requests

        if end <= start:
            return 0
        if self.bytes_read + (end - start) > MAX_HEADER_READ:
            raise HubError(f"{self.display}: the GGUF header needs more than {MAX_HEADER_READ // MIB} MiB of reads;"
                           " giving up (download the model instead)")
        if not self.ranges and start > 0:
            raise WalkFailed("the server ignores Range")
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
                    raise WalkFailed("the server ignores Range")
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


def _fetch_header(rf: _RemoteFile, display: str, shard: int) -> tuple[bytes, tuple, bool]:
    """(header bytes, parsed part, synthetic) for one remote GGUF file."""
    try:
        return read_header(rf, display, shard)
    except WalkFailed as e:
        raise HubError(f"{display}: unexpected answer to a range request ({e})") from None
