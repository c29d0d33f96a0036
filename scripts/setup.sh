#!/usr/bin/env bash
# Idempotent set-up shared by the README's two commands: system tools, .venv with gpcrun, llama.cpp build.
# Sourced by scripts/demo and scripts/test; safe to run again (each step checks before it works).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"

log() { echo "[setup] $*" >&2; }

# Build tools are required; ccache (fast rebuilds) and fio (disk bandwidth) are wanted. apt only as root.
need=()
for tool in cmake:cmake g++:g++ ccache:ccache fio:fio; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
"$PY" -c "import venv, ensurepip" >/dev/null 2>&1 || need+=(python3-venv)
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "apt-get install ${need[*]}"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null \
      || log "warning: apt-get install ${need[*]} failed"
  else
    log "warning: missing ${need[*]} (install them with your package manager)"
  fi
fi

if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi
# Reinstall only when pyproject.toml changed.
stamp=".venv/.gpcrun-installed"
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing gpcrun and its dependencies into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v "is ignored" >&2 || true
  .venv/bin/python -c "import gpcrun, click, pynvml, psutil, gguf, huggingface_hub, requests, pytest, hypothesis"
  echo "$want" > "$stamp"
fi

# llama-server & co. from source, cached by key (cold: ~5-9 min on 2 cores; cached: <1 s).
# GPCRUN_NO_BUILD=1 (./scripts/test --fast) skips it: the pure-logic tests need no llama.cpp.
if [ "${GPCRUN_NO_BUILD:-0}" != 1 ]; then
  LLAMA_BIN_DIR="$(.venv/bin/python scripts/build_llama.py ${GPCRUN_BUILD_ARGS:-} | tail -n 1)"
  export LLAMA_BIN_DIR
fi
