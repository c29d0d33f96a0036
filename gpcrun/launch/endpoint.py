"""Where a client reaches a llama-server it started, for every way llama-server listens (tools/server/server-http.cpp):
a comma-separated --host list (TCP addresses and UNIX socket paths ending in .sock), IPv6, TLS (--ssl-key-file and
--ssl-cert-file), --api-prefix, from flags or LLAMA_ARG_*; and an HTTP session that can speak to each of them.
"""
from __future__ import annotations

import os
import socket
import urllib.parse
from typing import Mapping, Sequence

from ..server_args import ServerArgs, settings

UNIX_SCHEME = "http+unix://"


def url_of(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """The base URL of the server started with this argv (argv[0] is the binary): the first TCP address (a
    wildcard reads as loopback, IPv6 in brackets), else the first UNIX socket (http+unix://<quoted path>); https
    with TLS; the API prefix appended."""
    lst = settings.listen(ServerArgs.parse(list(argv[1:]), os.environ if env is None else env, strict=False))
    prefix = lst.api_prefix
    tcp = [h for h in lst.hosts if not h.endswith(".sock")]
    if not tcp and lst.hosts:
        return UNIX_SCHEME + urllib.parse.quote(lst.hosts[0], safe="") + prefix
    host = tcp[0] if tcp else "127.0.0.1"
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if lst.tls else 'http'}://{host}:{lst.port}{prefix}"


def port_taken(url: str, timeout_s: float = 0.5) -> bool:
    """True when something already accepts TCP connections at the URL's host and port: the server gpcrun is about
    to start could not bind there, and whatever answers would be taken for it. UNIX sockets: never."""
    if url.startswith(UNIX_SCHEME):
        return False
    u = urllib.parse.urlsplit(url)
    if u.hostname is None or u.port is None:
        return False
    try:
        with socket.create_connection((u.hostname, u.port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _unix_adapter():
    """requests over a UNIX socket: http+unix://<quoted socket path>/endpoint (requests is imported here, not at
    start-up: llama-server is already loading by the time gpcrun first asks it anything)."""
    import http.client  # with requests, after llama-server is spawned: ~10 ms off gpcrun's start-up

    import requests
    import requests.adapters

    class _UnixConnection(http.client.HTTPConnection):
        def __init__(self, path: str, timeout: float | None = None) -> None:
            super().__init__("localhost", timeout=timeout)
            self._path = path

        def connect(self) -> None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            if self.timeout is not None:
                s.settimeout(self.timeout)
            s.connect(self._path)
            self.sock = s

    class UnixAdapter(requests.adapters.BaseAdapter):
        def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
            rest = request.url[len(UNIX_SCHEME):]
            quoted, _, path = rest.partition("/")
            t = timeout[0] if isinstance(timeout, tuple) else timeout
            conn = _UnixConnection(urllib.parse.unquote(quoted), timeout=t)
            try:
                conn.request(request.method, "/" + path, body=request.body, headers=dict(request.headers))
                raw = conn.getresponse()
                resp = requests.Response()
                resp.status_code = raw.status
                resp.headers = requests.structures.CaseInsensitiveDict(raw.getheaders())
                resp._content = raw.read()
                resp.url = request.url
                resp.request = request
                resp.encoding = requests.utils.get_encoding_from_headers(resp.headers)
                return resp
            except OSError as e:
                raise requests.ConnectionError(e, request=request) from None
            finally:
                conn.close()

        def close(self) -> None:
            pass

    return UnixAdapter()


def session_for(url: str, api_key: str | None = None):
    """A requests.Session that reaches this server: UNIX sockets mounted, TLS without certificate checks (a server
    gpcrun started itself on this machine, typically with a self-signed certificate), the API key sent."""
    import requests
    s = requests.Session()
    s.trust_env = False  # a server on this machine: no proxies, and no CA bundle from the environment overriding
    if url.startswith(UNIX_SCHEME):
        s.mount(UNIX_SCHEME, _unix_adapter())
    if url.startswith("https://"):
        import urllib3
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        s.verify = False
    if api_key:  # a server started with --api-key answers /completion 401 without it
        s.headers["Authorization"] = f"Bearer {api_key}"
    return s
