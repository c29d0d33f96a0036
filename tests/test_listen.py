"""Readiness for every way llama-server listens: host lists, IPv6, a UNIX socket, --api-prefix with --api-key, TLS.
Each runs the real llama-server under `gpcrun serve` until it is ready, then asks /props through the same route."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gpcrun.launch.endpoint import session_for, url_of
from gpcrun.launch.run import free_port
from tests.proc_util import serve_until_ready, stop_serve

THREADS = ["-t", "1", "-tb", "1"]


def test_url_of_every_listen_form():
    assert url_of(["s"], {}) == "http://127.0.0.1:8080"
    assert url_of(["s", "--host", "127.0.0.1,::1", "--port", "9"], {}) == "http://127.0.0.1:9"
    assert url_of(["s", "--host", "::", "--port", "9"], {}) == "http://[::1]:9"
    assert url_of(["s", "--host", "0.0.0.0"], {"LLAMA_ARG_PORT": "7"}) == "http://127.0.0.1:7"
    assert url_of(["s", "--host", "/tmp/a b.sock", "--api-prefix", "/v1/"], {}) == "http+unix://%2Ftmp%2Fa%20b.sock/v1"
    assert url_of(["s", "--ssl-key-file", "k", "--ssl-cert-file", "c"], {}) == "https://127.0.0.1:8080"
    assert url_of(["s"], {"LLAMA_ARG_HOST": "::1", "LLAMA_ARG_API_PREFIX": "/p"}) == "http://[::1]:8080/p"


@pytest.fixture
def env(tmp_path, llama_server_bin):
    return dict(os.environ, GPCRUN_HOME=str(tmp_path / "home"), GPCRUN_LLAMA_SERVER=str(llama_server_bin))


def _tls_files(tmp_path: Path) -> tuple[str, str]:
    if not shutil.which("openssl"):
        pytest.skip("openssl CLI not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
    return str(key), str(cert)


@pytest.mark.parametrize("form", ["host list", "ipv6 only", "unix socket", "prefix and key", "tls"])
def test_ready_and_reachable(form, env, tiny_models, tmp_path):
    port = str(free_port())
    key = None
    extra = {"host list": ["--host", "127.0.0.1,::1", "--port", port],
             "ipv6 only": ["--host", "::1", "--port", port],
             "unix socket": ["--host", str(tmp_path / "llama.sock")],
             "prefix and key": ["--port", port, "--api-prefix", "/llm", "--api-key", "sekrit-key"],
             "tls": ["--port", port]}[form]
    if form == "prefix and key":
        key = "sekrit-key"
    if form == "tls":
        k, c = _tls_files(tmp_path)
        extra += ["--ssl-key-file", k, "--ssl-cert-file", c]
    proc, url = serve_until_ready(["-m", str(tiny_models["tiny-llama-q8_0"]), "-c", "512", *THREADS, *extra], env)
    try:
        with session_for(url, key) as s:
            props = s.get(url + "/props", timeout=10).json()
        assert props["total_slots"] == 4  # llama-server's default kept
        if form == "unix socket":
            assert url.startswith("http+unix://")
        if form == "tls":
            assert url.startswith("https://")
        if form == "prefix and key":
            assert url.endswith("/llm")
    finally:
        stop_serve(proc)
