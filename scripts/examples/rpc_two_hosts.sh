#!/usr/bin/env bash
# One model across machines with llama.cpp's RPC backend, planned by gpcrun.
#
# On each remote host (llama.cpp built with -DGGML_RPC=ON; scripts/build_llama.py builds ggml-rpc-server):
#     ggml-rpc-server -H 0.0.0.0 -p 50052          # exposes that host's device (its CPU, or its GPU with -d)
# (ggml-rpc-server has no authentication: bind it to a private network only.)
#
# On the machine that runs llama-server:
#     gpcrun plan  MODEL --device-memory RPC0=20480 --device-memory RPC1=20480 -- --rpc hostA:50052,hostB:50052
#     gpcrun serve MODEL -- --rpc hostA:50052,hostB:50052
# gpcrun asks llama-server for its device list (RPC0, RPC1 ... ahead of local GPUs), places layers on them within
# the memory they report (or --device-memory, since a CPU rpc server reports all of its host's RAM as free), and
# says that the watchdog cannot watch the remote hosts' memory.
#
# This script runs that on one machine: two local rpc servers, each allowed less than the model, and the plan
# that uses both. Usage: scripts/examples/rpc_two_hosts.sh [MODEL] [MiB per server]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
MODEL=${1:-$("$PY" scripts/fetch_demo_model.py | tail -1)}
CAP_MIB=${2:-40}
BIN=$("$PY" -c 'from gpcrun.launch.binary import find_tool; print(find_tool("llama-server").parent)')
P1=50652 P2=50653
"$BIN/ggml-rpc-server" -H 127.0.0.1 -p $P1 >/dev/null 2>&1 & R1=$!
"$BIN/ggml-rpc-server" -H 127.0.0.1 -p $P2 >/dev/null 2>&1 & R2=$!
trap 'kill $R1 $R2 2>/dev/null || true' EXIT
sleep 1
"$PY" -m gpcrun plan "$MODEL" --margin 0 --device-memory RPC0=$CAP_MIB --device-memory RPC1=$CAP_MIB \
    -- --rpc 127.0.0.1:$P1,127.0.0.1:$P2 -c 2048
