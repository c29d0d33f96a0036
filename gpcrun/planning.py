"""Planning on this machine: model references resolved to headers, the request built from gpcrun's options and
llama-server's own arguments (ServerArgs), the target from the measured profile or spec sheets, calibration from
receipts. The pure planner (gpcrun/plan/) does the deciding; this module only gathers its inputs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence

from .errors import UnknownGpuError, UsageError
from .gpu_specs import GPU_SPECS, find_spec


@dataclass(frozen=True)
class ResolvedModel:
    """A MODEL reference read as far as planning needs: the header (ModelInfo), and for a hub ref what to fetch."""

    ref: str  # as the user wrote it
    info: object  # ModelInfo
    hub: dict | None  # hub resolution (repo, commit, files, bytes read) when ref is a hub ref

    @property
    def is_hub(self) -> bool:
        return self.hub is not None

    @property
    def file_name(self) -> str:
        if self.hub:
            return os.path.basename((self.hub.get("files") or [self.info.path])[0])
        return os.path.basename(self.info.path)

    def local_path(self) -> str:
        """The file llama-server loads: a hub ref is downloaded now (only call this once the plan ships)."""
        if self.hub is None:
            return self.info.path
        from .hub import download_model
        return download_model(self.ref)

    def receipt_doc(self) -> dict:
        from .model import header_sha256
        i = self.info
        return {"file_name": self.file_name, "path": self.ref if self.hub else i.path,
                "size_bytes": i.file_size_bytes, "header_sha256": header_sha256(i), "architecture": i.architecture,
                "quant_mix_bytes": i.quant_mix(), "tensor_bytes": i.tensor_bytes, "hub": self.hub}


def resolve_model(ref: str) -> ResolvedModel:
    """A local path (all shards of a split model) or a hub ref (headers only, by range requests)."""
    from .model import load_model
    if os.path.exists(ref):  # a local file is never a hub ref (hub.is_hub_ref): skip the hub's imports
        return ResolvedModel(ref, load_model(ref), None)
    from .hub import is_hub_ref, load_ref_header
    if is_hub_ref(ref):
        info, hub = load_ref_header(ref)
        return ResolvedModel(ref, info, hub)
    return ResolvedModel(ref, load_model(ref), None)


def served_model_check(planned: ResolvedModel, served_path: str | None) -> dict:
    """Is the model llama-server reports (/props model_path) the one gpcrun planned? Compared by header fingerprint,
    so a copy or a link of the same file is the same model, and a pass-through -m, a wrapper --server-bin or a file
    replaced between plan and load is not. same: True / False / None (unknown, with the reason)."""
    from .errors import GpcrunError
    from .model import header_sha256, load_model
    if not served_path:
        return {"served_path": None, "same": None, "reason": "llama-server did not report model_path in /props"}
    try:
        got = header_sha256(load_model(served_path))
    except (GpcrunError, OSError) as e:
        return {"served_path": served_path, "same": None, "reason": f"cannot read the served model's header: {e}"}
    same = got == header_sha256(planned.info)
    return {"served_path": served_path, "same": same, "served_header_sha256": got,
            "reason": "same header as the planned model" if same else
            f"llama-server served {served_path}, not the planned {planned.file_name}: this receipt calibrates nothing"}


def server_args(argv: Sequence[str], env: Mapping[str, str] | None = None, binary: str | None = None):
    """ServerArgs for llama-server's arguments and the LLAMA_* environment, with the grammar of `binary`."""
    from .server_args import ServerArgs, grammar_for
    return ServerArgs.parse(argv, os.environ if env is None else env, grammar_for(binary))


def build_request(ctx, kv_type, parallel, floor, margin_mib, args, *, env: Mapping[str, str] | None = None):
    """The planner's Request: gpcrun's options plus what the user pinned in llama-server's arguments/env.

    `args` is a ServerArgs or a list of llama-server arguments (the environment is read only for a list).
    parallel=None plans for llama-server's own default (-np auto: 4 slots sharing one unified KV cache,
    tools/server/server.cpp) and writes no -np. A gpcrun option that contradicts a value the user gave
    llama-server is a usage error: gpcrun never picks one silently."""
    from dataclasses import replace

    from .plan import MIB, Request, pinned_from
    from .server_args import ServerArgs
    sa = args if isinstance(args, ServerArgs) else server_args(list(args), env if env is not None else {})
    pin = pinned_from(sa)
    if ctx is not None and pin.ctx is not None and ctx != pin.ctx:
        raise UsageError(f"--ctx {ctx} contradicts {sa.where('ctx-size')} given to llama-server (gpcrun never"
                         " overrides it): drop one")
    if kv_type is not None and any(t is not None and t != kv_type for t in (pin.type_k, pin.type_v)):
        where = " and ".join(w for w in (sa.where("cache-type-k"), sa.where("cache-type-v")) if w)
        raise UsageError(f"--kv-type {kv_type} contradicts {where} given to llama-server (gpcrun never overrides"
                         " it): drop one")
    if parallel is None:
        if pin.parallel is None:  # llama-server's -np auto (server.cpp: n_parallel = 4, kv_unified = true)
            pin = replace(pin, parallel=4, kv_unified=True)
        parallel = pin.parallel
    kw = {}
    if margin_mib is not None:
        kw["gpu_margin_bytes"] = int(margin_mib * MIB)
    return Request(ctx=ctx, kv_type=kv_type, parallel=parallel, floor_tok_s=floor, pinned=pin, **kw)


def load_calibration(info, target, pinned):
    from .receipt import argv_threads, load_calibration as load
    return load(info, target, argv_threads(pinned.passthrough))


def build_target(vram: Sequence[int] = (), gpu: Sequence[str] = (), refresh: bool = False, types: Sequence[str] = (),
                 profile_file: str | None = None, cpu_threads: int | None = None,
                 cpu_bandwidth_gbs: float | None = None, head_dims: Sequence[int] = ()):
    """This machine (the measured profile), or hypothetical GPUs (--gpu NAME spec sheets, --vram MiB free);
    another machine's `gpcrun profile --calibrate --json` (profile_file, with its calibration), or a host
    described by its threads and decode bandwidth."""
    from .hardware.profile import get_profile
    from .targets import target_from_profile
    specs = []
    for name in gpu:
        spec = find_spec(name)
        if spec is None:
            raise UnknownGpuError(f"unknown GPU {name!r}; known: " + ", ".join(s.name for s in GPU_SPECS.values()))
        specs.append(spec)
    if profile_file is not None:
        doc = _read_profile_file(profile_file)
        cal = doc.get("calibration")
    else:
        doc = get_profile(refresh=refresh).to_json()
        cal = None if cpu_bandwidth_gbs else host_calibration(doc, types, head_dims)
    target = target_from_profile(doc, vram_mib=list(vram), specs=specs, calibration=cal, cpu_threads=cpu_threads,
                                 cpu_rate_bytes_per_s=cpu_bandwidth_gbs * 1e9 if cpu_bandwidth_gbs else None)
    if not (specs or vram or profile_file or cpu_bandwidth_gbs) and not target.gpus:
        from .devices import with_local_llama_gpus
        target = with_local_llama_gpus(target)
    return target


def _read_profile_file(path: str) -> dict:
    import json
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"--profile {path}: cannot read a profile ({e.__class__.__name__}: {e})") from None
    if not isinstance(doc, dict) or doc.get("schema") != "gpcrun.profile/1":
        raise UsageError(f"--profile {path}: not a gpcrun profile (gpcrun profile --calibrate --json > FILE)")
    return doc


def model_types(info, share: float = 0.1) -> tuple[str, ...]:
    """The weight types holding at least `share` of a model's bytes: the ones worth calibrating for it."""
    mix = info.quant_mix()
    total = sum(mix.values()) or 1
    return tuple(t for t, b in mix.items() if b >= share * total and t not in ("F32",))


def model_head_dims(info) -> tuple[int, ...]:
    from .plan.speed import head_size
    return (head_size(info.facts),) if info.facts.get("head_count") else ()


def host_calibration(profile_doc: dict, types: Sequence[str] = (), head_dims: Sequence[int] = ()) -> dict | None:
    """The llama-bench calibration of this machine and build (gpcrun/calibrate): cached, else measured now once
    (progress on stderr, 30-40 s on 2 cores). GPCRUN_CALIBRATE=cached uses only a cached one, =off never one:
    the forecast then falls back to the one-thread copy bandwidth and says so."""
    from .targets import default_threads, gpu_names
    return calibration(profile_doc.get("fingerprint") or "", default_threads(profile_doc) or 1, types, head_dims,
                       gpu_names(profile_doc))


def calibration(fingerprint: str, threads: int, types: Sequence[str] = (), head_dims: Sequence[int] = (),
                devices: Sequence[str] = ()) -> dict | None:
    """The calibration document with the host and `devices` (llama.cpp names, or RPC@HOST:PORT) measured, under
    GPCRUN_CALIBRATE (auto: measured now if not cached; cached; off). A failed run warns and gives None."""
    from .calibrate import llc_bytes, load_cached, load_or_calibrate
    mode = os.environ.get("GPCRUN_CALIBRATE", "auto").lower()
    if mode == "off":
        return None
    if mode == "cached":
        return load_cached(fingerprint)
    try:
        return load_or_calibrate(fingerprint, threads, llc_bytes(), types=tuple(types), head_dims=tuple(head_dims),
                                 devices=tuple(devices))
    except Exception as e:  # noqa: BLE001 - no llama-bench, a failed run: the labelled fallback, with the reason
        import sys
        print(f"gpcrun: warning: calibration failed ({e}); speed forecast from the one-thread copy bandwidth",
              file=sys.stderr)
        return None


def extras_for(sa, target, ngl: int, model: ResolvedModel | None = None) -> tuple:
    """The extra files llama-server loads (draft model, LoRA adapters, control vectors, projector), headers read.
    With llama-server's own -hf, the repo's projector that -hf loads beside the model (hub "mmproj") is one."""
    from .model import load_model
    from .plan import Extra
    from .server_args import settings
    files = settings.files(sa)
    gpu_layers = bool(target.gpus) and ngl > 0
    ngld = sa.value("spec-draft-ngl")
    ngld = None if ngld in (None, "auto", "-1") else (10 ** 6 if ngld in ("all", "-2") else int(ngld))
    draft_info = [(p, load_model(p)) for p in files["draft"]]
    # -hfd REPO[:QUANT]: llama-server downloads the draft (common/arg.cpp plan_spec), gpcrun reads its header by
    # range requests. A draft repo that ships an mtp-/eagle3-/dflash-/dspark- sidecar makes llama-server load the
    # sidecar instead: the plan then holds the full draft model, more than is loaded.
    if files["draft_hf"] and not files["draft"]:
        from .hub import load_ref_header
        draft_info += [(r, load_ref_header(r)[0]) for r in files["draft_hf"][-1:]]
    out = [Extra("draft", p, info, bool(target.gpus), ngld,
                 settings.cache_type(sa, "spec-draft-type-k") or "f16",
                 settings.cache_type(sa, "spec-draft-type-v") or "f16") for p, info in draft_info]
    out += [Extra("lora", p, load_model(p), gpu_layers) for p in files["lora"]]
    out += [Extra("control_vector", p, load_model(p), gpu_layers) for p in files["control_vector"]]
    offload = settings.mmproj_offload(sa) and bool(target.gpus)
    out += [Extra("mmproj", p, load_model(p), offload) for p in files["mmproj"]]
    hub = model.hub if model is not None else None
    if hub and hub.get("mmproj") and settings.model_source(sa).kind == "hf" and settings.mmproj_auto(sa):
        from .hub import load_ref_header
        ref = f"hf://{hub['repo']}@{hub['commit']}/{hub['mmproj']}"
        out.append(Extra("mmproj", ref, load_ref_header(ref)[0], offload))
    return tuple(out)


def _extras_and_cache(plan, request, sa, model: ResolvedModel | None = None):
    from .plan import extra_lines, plan_prompt_cache, room_after
    ev = plan.chosen or plan.nearest
    extras = extras_for(sa, plan.target, ev.placement.ngl if ev else 0, model) if sa is not None else ()
    lines = extra_lines(plan, extras, plan.target, request)
    return lines, plan_prompt_cache(room_after(plan, lines), request.pinned.cache_ram_mib)


def _planned(model: ResolvedModel, request, target, sa, device_memory: Mapping[str, int] | None = None):
    """(the plan, its extra-file lines, its prompt cache): the extras' headers are read once per plan."""
    from .plan import apply_extras, apply_prompt_cache, make_plan
    target = target if target is not None else build_target(types=model_types(model.info),
                                                            head_dims=model_head_dims(model.info))
    from .devices import with_llama_devices, with_split_mode_note, with_watch_note
    target = with_llama_devices(target, sa, device_memory, types=model_types(model.info),
                                head_dims=model_head_dims(model.info))
    plan = make_plan(model.info, target, request, load_calibration(model.info, target, request.pinned))
    plan = with_split_mode_note(with_watch_note(plan), sa)
    lines, pc = _extras_and_cache(plan, request, sa, model)
    return apply_prompt_cache(apply_extras(plan, lines), pc), lines, pc


def plan_model(model: ResolvedModel, request, target=None, sa=None):
    """The plan for a resolved model (a hub ref's argv has `-m <header>` until the pipeline downloads it), with
    the extra files llama-server loads (plan/extras.py) and its host prompt cache (plan/cache.py) accounted."""
    return _planned(model, request, target, sa)[0]


def plan_with_document(model: ResolvedModel, request, sa, target=None, requested: dict | None = None,
                       device_memory: Mapping[str, int] | None = None):
    """(plan, plan.json document) in one pass: what serve, bench, batch and `gpcrun plan` write and print."""
    plan, lines, pc = _planned(model, request, target, sa, device_memory)
    return plan, _document(plan, sa, model, requested, lines, pc)


def plan_document(plan, sa, model: ResolvedModel, requested: dict | None = None, request=None) -> dict:
    """plan.json / receipts for a plan made elsewhere: the plan, a line for each extra file and the host prompt
    cache, and every change the plan makes to the user's command line, with its reason."""
    request = request if request is not None else build_request(None, None, None, 1.0, None, sa)
    return _document(plan, sa, model, requested, *_extras_and_cache(plan, request, sa, model))


def _document(plan, sa, model: ResolvedModel, requested: dict | None, lines, pc) -> dict:
    from .plan import describe_changes
    doc = plan.to_json()
    doc["extras"] = [x.to_json() for x in lines]
    doc["prompt_cache"] = pc.to_json()
    doc["changes"] = describe_changes(plan, sa, model.info.facts.get("context_length"), requested,
                                      {"cache-ram": pc.reason() or ""})
    return doc


def shown_plan(model: ResolvedModel, plan):
    """The plan as people run it by hand: a hub ref's `-m <header>` becomes llama.cpp's --hf-repo/--hf-file."""
    from dataclasses import replace
    if model.hub is None:
        return plan
    from .hub import hub_argv
    return replace(plan, argv=hub_argv(plan.argv, model.info, model.hub))


__all__ = ["ResolvedModel", "UsageError", "build_request", "build_target", "load_calibration", "plan_model",
           "plan_document", "plan_with_document", "resolve_model", "server_args", "shown_plan"]
