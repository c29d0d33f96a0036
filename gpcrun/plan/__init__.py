"""Pure planning: ModelInfo + Target (hardware) + Request -> Plan (memory map, flags, forecast, verdict).

No I/O here: the CLI builds the Target from the measured profile (or spec sheets) and prints the Plan.
The modules, from the bottom up (each imports only those above it in this list):
- constants: units, margins, overheads, efficiencies, each with its source;
- request: the inputs (DeviceTarget, Target, Request, Pinned) and pinned_from (what the user set, read from
  gpcrun.server_args);
- types: Placement, DeviceMemory, Forecast, Evaluation, Plan and their JSON;
- layout: llama.cpp's placement rules (which device holds each weight), LayoutTable, CPU repacking;
- kv: the KV cache and recurrent state per device;  compute: the compute-buffer estimate;
- memory: the memory map per device;  speed: the decode-speed forecast and Calibration;
- verdict: the wording of every reason;  search: the candidate search, make_plan and the llama-server argv;
- extras: draft model, LoRA adapters, control vectors, projector: their own memory lines;
- cache: llama-server's host prompt cache (--cache-ram) kept inside the host's room;
- changes: what the plan adds to the user's command line, each with its reason.
`gpcrun.plan` re-exports the public names, so importers need not know the layout.
"""
from __future__ import annotations

from .cache import DEFAULT_CACHE_RAM_MIB, PromptCache, apply_prompt_cache, plan_prompt_cache
from .changes import describe_changes
from .extras import Extra, ExtraLine, apply_extras, extra_lines, room_after
from .compute import estimate_compute_bytes
from .constants import (CPU_LAYER_OVERHEAD_S, CTX_PAD, DEFAULT_EFFICIENCY, DEFAULT_GPU_MARGIN_BYTES,
                        DEFAULT_GPU_RUNTIME_OVERHEAD_BYTES, DEFAULT_MIN_CTX, EXPS_REGEX, GIB, GPU_LAYER_OVERHEAD_S,
                        HOST_MARGIN_FRACTION, HOST_MARGIN_MIN_BYTES, HOST_PROCESS_OVERHEAD_BYTES, MIB,
                        UNCALIBRATED_BAND)
from .kv import context_bytes_by_device, kv_size_tokens
from .layout import LayoutTable, repack_types_for
from .memory import memory_map, output_buffer_bytes
from .request import DeviceTarget, Pinned, Request, Target, parse_server_args, pinned_from
from .search import build_argv, evaluate, make_plan
from .speed import Calibration, bytes_read_per_token, forecast
from .types import DeviceMemory, Evaluation, Forecast, Placement, Plan, placement_json

__all__ = [
    "CPU_LAYER_OVERHEAD_S", "CTX_PAD", "DEFAULT_EFFICIENCY", "DEFAULT_GPU_MARGIN_BYTES",
    "DEFAULT_GPU_RUNTIME_OVERHEAD_BYTES", "DEFAULT_MIN_CTX", "EXPS_REGEX", "GIB", "GPU_LAYER_OVERHEAD_S",
    "HOST_MARGIN_FRACTION", "HOST_MARGIN_MIN_BYTES", "HOST_PROCESS_OVERHEAD_BYTES", "MIB", "UNCALIBRATED_BAND",
    "DeviceTarget", "Pinned", "Request", "Target", "parse_server_args", "pinned_from",
    "DeviceMemory", "Evaluation", "Forecast", "Placement", "Plan", "placement_json",
    "LayoutTable", "repack_types_for", "context_bytes_by_device", "kv_size_tokens", "estimate_compute_bytes",
    "memory_map", "output_buffer_bytes", "Calibration", "bytes_read_per_token", "forecast",
    "build_argv", "describe_changes", "evaluate", "make_plan",
    "DEFAULT_CACHE_RAM_MIB", "PromptCache", "apply_prompt_cache", "plan_prompt_cache",
    "Extra", "ExtraLine", "apply_extras", "extra_lines", "room_after",
]
