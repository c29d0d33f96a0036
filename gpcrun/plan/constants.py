"""The planner's numbers in one place: units, default margins and overheads, the context padding, the expert-tensor
pattern and the uncalibrated efficiencies. Each figure keeps its source (llama.cpp code or gpu-facts.md) beside it."""
from __future__ import annotations

MIB = 1 << 20
GIB = 1 << 30

# gpu-facts.md (H200, CUDA 13): NVML per-process VRAM = llama.cpp "self" + ~720 MiB (CUDA context, cuBLAS).
DEFAULT_GPU_RUNTIME_OVERHEAD_BYTES = 720 * MIB
# llama.cpp's --fit leaves 1024 MiB free per GPU by default (common.h fit_params_target).
DEFAULT_GPU_MARGIN_BYTES = 1024 * MIB
# Host: keep the watchdog's SIGTERM line (max(5 %, 1 GiB) available, issue 5) out of reach of a planned run.
HOST_MARGIN_MIN_BYTES = 1 * GIB
HOST_MARGIN_FRACTION = 0.05
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
