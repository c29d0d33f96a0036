#!/usr/bin/env python3
"""Wait (bounded) for a gpcrun-served llama-server at URL, ask for one completion, print it with its timings."""
from __future__ import annotations

import os
import sys
import time

import requests


def main(url: str, serve_pid: int) -> int:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            os.kill(serve_pid, 0)
        except ProcessLookupError:
            print("gpcrun serve exited before the server was ready", file=sys.stderr)
            return 1
        try:
            if requests.get(url + "/health", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.1)
    else:
        print(f"no server at {url} after 180 s", file=sys.stderr)
        return 1
    prompt = "The three primary colors are"
    r = requests.post(url + "/completion", json={"prompt": prompt, "n_predict": 32, "temperature": 0,
                                                 "cache_prompt": False}, timeout=120)
    r.raise_for_status()
    out = r.json()
    t = out["timings"]
    print(f"prompt: {prompt!r}\ncompletion: {out['content']!r}")
    print(f"prefill {t['prompt_n']} tok at {t['prompt_per_second']:.1f} tok/s;"
          f" decode {t['predicted_n']} tok at {t['predicted_per_second']:.1f} tok/s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
