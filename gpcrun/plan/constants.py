"""The planner's numbers in one place: units, default margins and overheads, the context padding, the expert-tensor
pattern and the uncalibrated efficiencies. Each figure keeps its source (llama.cpp code or gpu-facts.md) beside it."""
from __future__ import annotations

MIB = 1 << 20
GIB = 1 << 30

# gpu-facts.md (H200, CUDA 13): NVML per-process VRAM = llama.cpp "self" + ~720 MiB (CUDA context, cuBLAS).
DEFAULT_GPU_RUNTIME_OVERHEAD_BYTES = 720 * MIB
# llama.cpp's --fit leaves 1024 MiB free per GPU by default (common.h fit_params_target).
DEFAULT_GPU_MARGIN_BYTES = 1024 * MIB
# Host: the watchdog's SIGTERM line, which a planned run keeps out of reach (its host margin): 5 % of the
# effective limit, raised to 1 GiB where that is at most 12.5 % of the limit (a 800 MiB container gets 100 MiB,
# not a floor above its whole limit); the SIGKILL line at 2.5 %. One rule for planner and watchdog.
HOST_MARGIN_MIN_BYTES = 1 * GIB
HOST_MARGIN_FRACTION = 0.05
HOST_MARGIN_MAX_FRACTION = 0.125
HOST_KILL_FRACTION = 0.025


def host_term_line_bytes(limit_bytes: int | None) -> int:
    """max(5 %, min(1 GiB, 12.5 %)) of the effective host limit: available memory below it -> SIGTERM. 1 GiB
    when the limit is unknown."""
    lim = limit_bytes or 0
    if lim <= 0:
        return HOST_MARGIN_MIN_BYTES
    return max(int(HOST_MARGIN_FRACTION * lim), min(HOST_MARGIN_MIN_BYTES, int(HOST_MARGIN_MAX_FRACTION * lim)))


def host_kill_line_bytes(limit_bytes: int | None) -> int:
    return int(HOST_KILL_FRACTION * (limit_bytes or 0))
# llama-server process itself outside its buffers (binary, libc, threads, HTTP): measured ~30-40 MiB RSS here.
HOST_PROCESS_OVERHEAD_BYTES = 48 * MIB
DEFAULT_MIN_CTX = 4096  # like llama.cpp's fit_params_min_ctx
CTX_PAD = 256  # llama-context.cpp: n_ctx = GGML_PAD(n_ctx, 256)
EXPS_REGEX = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"
# Uncalibrated realised fraction of the bandwidth ceiling; band multipliers around it.
DEFAULT_EFFICIENCY = {"host": 0.45, "gpu": 0.6}
UNCALIBRATED_BAND = (0.5, 1.5)
# The decode band with measured host rates: the calibration samples' own spread, widened by the forecast model's
# worst decode error on this machine in scripts/bench/forecast_accuracy.py (README: "Speed forecasts").
MODEL_ERROR = 0.15
# The prompt batch the calibration measures prefill on (llama-bench -p), and the prefill forecast is for.
PREFILL_BATCH_TOKENS = 64
# Fixed per-layer cost of a decode step on a GPU (kernel launches, sync): gpu-facts.md, 3.7 ms / 48 layers.
GPU_LAYER_OVERHEAD_S = 77e-6
CPU_LAYER_OVERHEAD_S = 10e-6
