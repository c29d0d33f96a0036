#!/usr/bin/env python3
"""Start a real llama-server on MODEL, ask for one completion, print it with the server's timings, stop."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import requests


def main(server_bin: str, model: str) -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix="gpcrun-demo-", suffix=".log", delete=False)
    t0 = time.monotonic()
    proc = subprocess.Popen([server_bin, "-m", model, "--host", "127.0.0.1", "--port", str(port), "-c", "2048",
                             "-np", "1", "-t", str(min(4, os.cpu_count() or 1))],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:
            if proc.poll() is not None:
                print(f"llama-server exited {proc.returncode}; log: {log.name}", file=sys.stderr)
                return 1
            try:
                if requests.get(url + "/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() - t0 > 120:
                print(f"llama-server not ready after 120 s; log: {log.name}", file=sys.stderr)
                return 1
            time.sleep(0.05)
        ready_s = time.monotonic() - t0
        prompt = "The three primary colors are"
        r = requests.post(url + "/completion", json={"prompt": prompt, "n_predict": 32, "temperature": 0,
                                                     "cache_prompt": False}, timeout=120)
        r.raise_for_status()
        out = r.json()
        t = out["timings"]
        print(f"ready in {ready_s:.2f} s; build {requests.get(url + '/props', timeout=5).json().get('build_info')}")
        print(f"prompt: {prompt!r}\ncompletion: {out['content']!r}")
        print(f"prefill {t['prompt_n']} tok at {t['prompt_per_second']:.1f} tok/s;"
              f" decode {t['predicted_n']} tok at {t['predicted_per_second']:.1f} tok/s")
        return 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
