#!/usr/bin/env python3
"""What `-fa auto` resolves to, predicted (gpcrun.plan.fa_auto) vs what the real llama-server logs.

Every generated hybrid/recurrent tiny model, every -ngl from 0 to n_layer + 1, with and without -nkvo, one
ggml-rpc-server on localhost standing in for a GPU (RPC0). llama-server logs "resolve_fused_ops: Flash Attention
enabled" or "... not supported, set to disabled" (src/llama-context.cpp); the script compares that with
flash_attn_auto_off for the same Placement and prints one row per model and the mismatches.

Usage: .venv/bin/python scripts/bench/fa_auto.py [--models NAME,...]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts/bench"))

from plan_accuracy import RpcServer, free_port, model_set, run_until_ready  # noqa: E402

from gpcrun.launch.binary import find_tool  # noqa: E402
from gpcrun.model import load_model  # noqa: E402
from gpcrun.model.layouts import layout  # noqa: E402
from gpcrun.plan import LayoutTable, Placement  # noqa: E402
from gpcrun.plan.fa_auto import flash_attn_auto_off  # noqa: E402


def measured_on(log: str) -> bool | None:
    if "Flash Attention enabled" in log:
        return True
    if "Flash Attention not supported, set to disabled" in log:
        return False
    return None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="")
    args = ap.parse_args()
    models = model_set()
    names = [n for n in models if n.endswith("-f16")]
    hybrid = []
    for n in names:
        lay = layout(load_model(models[n]).facts)
        if any(lay.recurrent) and any(lay.kv):
            hybrid.append(n)
    if args.models:
        hybrid = [n for n in hybrid if n in args.models.split(",")]
    server = find_tool("llama-server")
    work = Path(tempfile.mkdtemp(prefix="gpcrun-fa-auto-"))
    rpc = RpcServer(server.with_name("ggml-rpc-server"), work)
    rpc.start()
    total = wrong = 0
    try:
        for name in hybrid:
            table = LayoutTable(load_model(models[name]), (), 1)
            row = []
            for nkvo in (False, True):
                for ngl in range(table.n_layer + 2):
                    pl = Placement(ngl=ngl, n_cpu_moe=0, ctx=2048, type_k="f16", type_v="f16", no_kv_offload=nkvo)
                    predicted = flash_attn_auto_off(table, pl, 1) is None
                    argv = [str(server), "-m", str(models[name]), "--host", "127.0.0.1", "--port", str(free_port()),
                            "-c", "2048", "-ngl", str(ngl), "--no-warmup", "-t", "1", "-lv", "4", "--rpc", rpc.endpoint,
                            *(["-nkvo"] if nkvo else [])]
                    log, _ = run_until_ready(argv, work / "server.log")
                    got = measured_on(log)
                    total += 1
                    ok = got == predicted
                    wrong += not ok
                    mark = {True: "on", False: "OFF", None: "??"}[got] + ("" if ok else f"(predicted {'on' if predicted else 'off'})")
                    row.append(f"{'nkvo ' if nkvo else ''}ngl{ngl}:{mark}")
            lay = layout(table.model.facts)
            kinds = "".join("B" if k and r else "A" if k else "R" if r else "-" for k, r in zip(lay.kv, lay.recurrent))
            print(f"{name:26s} layers {kinds}: " + " ".join(row), flush=True)
    finally:
        rpc.stop()
    print(f"\n{total - wrong} of {total} placements: -fa auto resolved as predicted")
    return 0 if wrong == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
