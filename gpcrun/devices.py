"""The devices a plan may use beyond the measured profile, as llama.cpp itself lists them (planning input, I/O):
ggml-rpc-servers the user's --rpc brings, non-NVIDIA local GPUs, `--device` limits, and the note on which devices
the watchdog cannot watch. The parsing is hardware/llama_devices.py; the planner stays pure (gpcrun/plan/).
"""
from __future__ import annotations

from typing import Mapping, Sequence


def with_llama_devices(target, sa, device_memory: Mapping[str, int] | None = None, server_bin: str | None = None,
                       types: Sequence[str] = (), head_dims: Sequence[int] = ()):
    """The target plus the devices the user's own flags bring, as llama.cpp lists them: `--rpc HOST:PORT,...`
    adds each ggml-rpc-server's device (RPC0 ...) with the memory it reports, ahead of local GPUs as llama.cpp
    orders them (hardware/llama_devices.py). device_memory: NAME -> bytes the user allows on a device (`gpcrun
    plan --device-memory RPC0=MIB`), at most what it reports free."""
    from dataclasses import replace

    from .hardware.llama_devices import list_devices
    from .launch.binary import find_tool
    from .plan import DeviceTarget
    from .targets import with_device_rates
    rpc = [str(v) for v in sa.values("rpc")] if sa is not None else []  # each --rpc adds servers (arg.cpp)
    wanted = (sa.value("device") or "").split(",") if sa is not None and sa.value("device") else None
    if not rpc:
        return split_mode_devices(only_devices(target, wanted), sa)
    found = list_devices(server_bin or str(find_tool("llama-server")), ["--rpc", ",".join(rpc)])
    caps = dict(device_memory or {})
    rpcs = [d for d in found if d.backend == "RPC"]
    cal = _rpc_calibration(target, [d.description for d in rpcs], types, head_dims)
    gpus = []
    for d in rpcs:
        free = min(d.free_bytes, caps[d.name]) if d.name in caps else d.free_bytes
        src = (f"llama-server --list-devices: {d.name} {d.description} ({d.total_bytes >> 20} MiB, {d.free_bytes >> 20}"
               " MiB free)" + (f"; --device-memory {caps[d.name] >> 20} MiB" if d.name in caps else ""))
        dev = with_device_rates(DeviceTarget(d.name, "gpu", free, None, 0, None, src),
                                 (cal or {}).get(f"RPC@{d.description}"))  # measured over the network
        gpus.append(dev if dev.decode_rates else replace(dev, source=src + "; rates not measured (GPCRUN_CALIBRATE)"))
    return split_mode_devices(only_devices(replace(target, gpus=(*gpus, *target.gpus)), wanted), sa)


def split_mode_devices(target, sa):
    """`--split-mode none` keeps the main GPU only (`-mg`, default 0; a negative -mg none): llama.cpp
    llama_model_load drops the other devices (src/llama.cpp:288-301). An -mg past the list is llama.cpp's own
    load error; the plan then uses no GPU."""
    from dataclasses import replace
    if sa is None or str(sa.value("split-mode") or "layer") != "none" or not target.gpus:
        return target
    try:
        main = int(sa.value("main-gpu") or 0)
    except ValueError:
        main = 0
    return replace(target, gpus=(target.gpus[main],) if 0 <= main < len(target.gpus) else ())


def _rpc_calibration(target, endpoints, types=(), head_dims=()) -> dict | None:
    """Each ggml-rpc-server calibrated like a GPU (every layer on it, over the network: llama-bench -rpc), once
    per machine, build and endpoint, cached beside the host's figures (planning.calibration)."""
    from .planning import calibration
    if not endpoints:
        return None
    doc = calibration(target.fingerprint or "", target.threads or 1, types, head_dims,
                      tuple(f"RPC@{e}" for e in endpoints))
    return (doc or {}).get("devices")


def only_devices(target, wanted):
    """`--device A,B` offloads to those devices only, in that order; `--device none` to none (arg.cpp
    parse_device_list)."""
    from dataclasses import replace
    if wanted is None:
        return target
    by_name = {g.name: g for g in target.gpus}
    return replace(target, gpus=tuple(by_name[n] for n in wanted if n in by_name))


def with_watch_note(plan):
    """Say which devices the watchdog cannot watch: an RPC device's memory is on another host (llama.cpp's own
    allocation failure there ends a load: exit 11)."""
    from dataclasses import replace
    ev = plan.chosen or plan.nearest
    used = {m.device for m in (ev.memory if ev else ()) if m.total_bytes}
    remote = [g.name for g in plan.target.gpus if g.name in used and g.name.startswith("RPC")]
    unwatched = [g.name for g in plan.target.gpus if g.name in used and g.source.startswith("llama-server")
                 and not g.name.startswith("RPC") and not g.shares_host_memory]
    shared = [g.name for g in plan.target.gpus if g.name in used and g.shares_host_memory]
    if shared:
        plan = replace(plan, notes=(*plan.notes, f"{', '.join(shared)} shares this host's memory (an integrated GPU):"
                                    " what the plan puts there is counted against the host too, and the watchdog"
                                    " watches it as host memory"))
    if not remote and not unwatched:
        return plan
    why = []
    if remote:
        why.append(f"{', '.join(remote)}: that memory is on another host, and llama.cpp cannot re-read it while the"
                   " server runs (a ggml-rpc-server serves one client at a time, ggml-rpc.cpp:2146-2153)")
    if unwatched:
        why.append(f"{', '.join(unwatched)}: no memory reading for that backend")
    note = (f"the watchdog watches this host's memory (and NVIDIA GPUs through NVML), not {'; not '.join(why)};"
            " an allocation that fails there ends the load (exit 11)")
    return replace(plan, notes=(*plan.notes, note))


def with_local_llama_gpus(target):
    """This machine with no NVIDIA GPU: the GPUs llama.cpp itself lists (Vulkan, ROCm/HIP, SYCL, Metal ...), so a
    non-NVIDIA GPU is planned with the memory its backend reports. A build without such a backend lists none."""
    from dataclasses import replace

    from .hardware.llama_devices import list_devices
    from .launch.binary import find_tool
    from .targets import gpus_from_llama
    try:
        found = list_devices(str(find_tool("llama-server")))
    except Exception:  # noqa: BLE001 - no binary yet, or it cannot list (DeviceListError): the profile stands
        return target
    gpus = gpus_from_llama(found, target.host.limit_bytes)
    return replace(target, gpus=tuple(gpus)) if gpus else target


def with_split_mode_note(plan, sa):
    """`--split-mode row|tensor` over several GPUs is planned as llama.cpp's default layer split, and says so:
    row splits each matrix by rows across the GPUs (make_gpu_buft_list, llama-model.cpp:1141-1166) and keeps
    the rest with the KV cache on the main GPU; tensor splits weights and KV (EXPERIMENTAL in arg.cpp)."""
    from dataclasses import replace
    mode = str(sa.value("split-mode") or "layer") if sa is not None else "layer"
    if mode not in ("row", "tensor") or len(plan.target.gpus) < 2:
        return plan
    note = (f"approximate: --split-mode {mode} is counted as a layer split across "
            f"{', '.join(g.name for g in plan.target.gpus)}; the per-GPU figures are not {mode}-split figures")
    return replace(plan, notes=(*plan.notes, note))
