"""gpcrun profile: what the machine really has now (GPUs, memory and cgroup limits, platform, bandwidths)."""
from __future__ import annotations

import click

from ..fmt import human_bytes
from .main import emit_json, main


@main.command("profile")
@click.option("--json", "as_json", is_flag=True, help="Print the stable JSON document (schema gpcrun.profile/1).")
@click.option("--refresh", is_flag=True, help="Measure bandwidths again instead of reusing the cached ones.")
@click.option("--disk", type=click.Path(exists=True), default=None,
              help="Also measure read bandwidth of the filesystem holding PATH with fio (direct I/O).")
@click.option("--calibrate", is_flag=True,
              help="Also measure llama.cpp's own CPU decode/prefill rates per weight type and thread count with"
                   " llama-bench (cached per machine and build; with --refresh measured again).")
def profile_cmd(as_json: bool, refresh: bool, disk: str | None, calibrate: bool) -> None:
    """Report GPUs, host memory, cgroup limits, platform and measured bandwidths; each value says how it was got."""
    from ..calibrate import llc_bytes, load_cached, load_or_calibrate
    from ..hardware.profile import get_profile  # lazy: keeps other commands' start-up fast
    prof = get_profile(refresh=refresh, disk=disk)
    doc = prof.to_json()
    if calibrate:
        from ..targets import default_threads, gpu_names
        cal = load_or_calibrate(prof.fingerprint, default_threads(doc) or 1, llc_bytes(), refresh=refresh,
                                quiet=as_json, devices=gpu_names(doc))
    else:
        cal = load_cached(prof.fingerprint)
    if as_json:
        emit_json(dict(doc, calibration=cal))
        return
    click.echo(render_text(prof) + "\n" + render_calibration(cal))


def render_calibration(cal: dict | None) -> str:
    if not cal:
        return ("Calibration: none yet (gpcrun profile --calibrate, or the first plan measures it; until then"
                " speed forecasts use the one-thread copy bandwidth)")
    import time
    age_h = (time.time() - cal.get("measured_at_unix", 0)) / 3600
    out = [f"Calibration (llama-bench, {cal.get('seconds')} s, {age_h:.1f} h ago; threads {cal.get('threads')}):"]
    by_type: dict[str, list[str]] = {}
    for d in cal.get("decode") or ():
        by_type.setdefault(d["type"], []).append(f"-t {d['threads']}: {d['bytes_per_s'] / 1e9:.1f} GB/s"
                                                 f" ({d['tok_s']:.1f} tok/s)")
    pre = {p["type"]: p for p in cal.get("prefill") or ()}
    for ty, cells in by_type.items():
        p = pre.get(ty)
        tail = f"; prefill {p['tok_s']:.1f} tok/s at -t {p['threads']}" if p else ""
        out.append(f"  {ty:5s} decode " + ", ".join(cells) + tail)
    from ..plan.rates import HostRates
    rates = HostRates.from_doc(cal)
    if rates is not None and rates.prefill:
        t = max(t for _, t, _ in rates.prefill)
        cells = [f"{ty} {pps / 1e9:.0f}" for ty, pt, pps in rates.prefill if pt == t]
        out.append(f"  prefill at -t {t}: " + ", ".join(cells) + " G weight-tokens/s"
                   + (f"; + {rates.prefill_layer_s(t) * 1e6:.1f} us per layer per prompt token (thin layers)"
                      if rates.prefill_layer else ""))
    for name, dev in (cal.get("devices") or {}).items():
        if dev.get("error"):
            out.append(f"  {name}: not calibrated ({dev['error']}); its forecast uses the spec sheet")
            continue
        pre = {p["type"]: p for p in dev.get("prefill") or ()}
        cells = [f"{d['type']} {d['bytes_per_s'] / 1e9:.1f} GB/s" + (f" (prefill {pre[d['type']]['tok_s']:.0f} tok/s)"
                 if d["type"] in pre else "") for d in dev.get("decode") or ()]
        out.append(f"  {name} (every layer on it): decode " + ", ".join(cells))
    return "\n".join(out)


def _val(obj, key: str, fmt=str) -> str:
    v = getattr(obj, key)
    if v is None:
        why = obj.unknown.get(key)
        return f"unknown ({why})" if why else "unknown"
    return fmt(v)


def _gbps(n: int | None) -> str:
    return "null" if n is None else f"{n / 1e9:.2f} GB/s"


def _yes(b: bool) -> str:
    return "yes" if b else "no"


def _watts(mw: int) -> str:
    return f"{mw / 1000:.1f} W"


def render_text(p: Profile) -> str:
    out: list[str] = []
    g = p.gpus
    cvd = "unset" if g.cuda_visible_devices is None else repr(g.cuda_visible_devices)
    if not g.devices:
        out.append(f"GPUs: none ({g.reason})")
    else:
        out.append(f"GPUs (driver {_val(g, 'driver_version')}, CUDA {_val(g, 'cuda_driver_version')},"
                   f" CUDA_VISIBLE_DEVICES {cvd}):")
    for d in g.devices:
        v = d.volatile
        out.append(f"  CUDA{d.cuda_index} (NVML {d.nvml_index}) {_val(d, 'name')}  {_val(d, 'uuid')}"
                   f"  cc {_val(d, 'compute_capability')}  bus {_val(d, 'pci_bus_id')}")
        if d.unified_memory:
            out.append("    unified memory: no dedicated VRAM figures; plan with host memory")
        else:
            out.append(f"    VRAM total {_val(d, 'total_bytes', human_bytes)},"
                       f" free {_val(v, 'free_bytes', human_bytes)}, used {_val(v, 'used_bytes', human_bytes)},"
                       f" reserved {_val(d, 'reserved_bytes', human_bytes)}"
                       f" [{d.sources.get('total_bytes', '?')}]")
        out.append(f"    PCIe gen {_val(d, 'pcie_link_gen_current')} x{_val(d, 'pcie_link_width_current')}"
                   f" (max gen {_val(d, 'pcie_link_gen_max')} x{_val(d, 'pcie_link_width_max')}),"
                   f" power {_val(v, 'power_draw_mw', _watts)} of {_val(d, 'power_limit_mw', _watts)} enforced,"
                   f" {_val(v, 'temperature_c')} C")
        if v.processes is None:
            out.append(f"    processes: {_val(v, 'processes')}")
        elif v.processes:
            out.append("    processes: " + ", ".join(
                f"pid {q.pid} {'unknown' if q.used_bytes is None else human_bytes(q.used_bytes)}" for q in v.processes))
    for n in g.notes:
        out.append(f"  note: {n}")

    m = p.host_memory
    out.append("")
    out.append("Host memory:")
    out.append(f"  total {_val(m, 'total_bytes', human_bytes)}, available {_val(m, 'available_bytes', human_bytes)},"
               f" swap {_val(m, 'swap_free_bytes', human_bytes)} free of {_val(m, 'swap_total_bytes', human_bytes)}")
    out.append(f"  effective available {_val(m, 'effective_available_bytes', human_bytes)}"
               f" = {m.sources.get('effective_available_bytes', '?')}")
    out.append(f"  effective limit {_val(m, 'effective_limit_bytes', human_bytes)}")

    out.append("")
    c = m.cgroup
    if c is None:
        out.append("cgroup: no memory cgroup mounted")
    else:
        out.append(f"cgroup v{c.version} {c.path}:")
        if c.max_bytes is None:
            out.append(f"  memory limit: none ({c.unknown.get('max_bytes')})")
        else:
            out.append(f"  memory limit {human_bytes(c.max_bytes)} at {c.limit_cgroup}, current"
                       f" {_val(c, 'current_bytes', human_bytes)}, headroom {_val(c, 'headroom_bytes', human_bytes)},"
                       f" swap max {_val(c, 'swap_max_bytes', human_bytes)}")
        out.append(f"  oom kills {_val(c, 'oom_kill_count')}")
        if c.pressure:
            ps = c.pressure
            full = ("" if ps.full_avg10_pct is None
                    else f", full avg10 {ps.full_avg10_pct:.2f}% avg60 {ps.full_avg60_pct:.2f}%")
            out.append(f"  memory pressure: some avg10 {ps.some_avg10_pct:.2f}% avg60 {ps.some_avg60_pct:.2f}%{full}"
                       f" [{ps.source}]")
        else:
            out.append("  memory pressure: unknown (no PSI file)")

    pl = p.platform
    out.append("")
    out.append("Platform:")
    out.append(f"  {_val(pl, 'os')} {_val(pl, 'kernel_release')} {_val(pl, 'arch')}, {_val(pl, 'distro')}")
    out.append(f"  container: {pl.container or 'none detected'}"
               + (f" ({', '.join(pl.container_evidence)})" if pl.container_evidence else "")
               + f"; WSL: {pl.wsl or 'no'}")
    quota = _val(pl, "cpu_quota_cores", lambda q: f"{q:g} cores")
    out.append(f"  CPU {_val(pl, 'cpu_model')}: {_val(pl, 'cores_physical')} physical / {_val(pl, 'cores_logical')}"
               f" logical, {_val(pl, 'cpus_usable')} usable, CPU quota {quota}")
    out.append(f"  ISA: {' '.join(pl.isa) or 'none listed'}")
    out.append(f"  hypervisor: {_val(pl, 'hypervisor', _yes)}, AMX permitted: {_val(pl, 'amx_permitted', _yes)}")
    uvm = pl.uvm_oversubscription_supported
    out.append(f"  CUDA managed-memory oversubscription: {_val(pl, 'uvm_oversubscription_supported', _yes)}"
               + (f" ({pl.sources.get('uvm_oversubscription_supported')})" if uvm is not None else ""))
    for w in pl.warnings:
        out.append(f"  warning: {w}")

    b = p.bandwidth
    out.append("")
    out.append("Bandwidth" + (" (measured values from the cache; --refresh measures again):" if b.reused_from_cache
                              else ":"))
    if b.cpu_memory:
        cm = b.cpu_memory
        out.append(f"  CPU memory: {_gbps(cm.bytes_per_s)} read+write (best {_gbps(cm.best_bytes_per_s)}),"
                   f" {cm.method}, {human_bytes(cm.buffer_bytes)} x {cm.samples} copies, median; {cm.measured_at}")
    else:
        out.append(f"  CPU memory: unknown ({b.cpu_memory_reason})")
    if b.pcie.skipped_reason:
        out.append(f"  PCIe: not measured ({b.pcie.skipped_reason})")
    for d in b.pcie.devices:
        if d.error:
            out.append(f"  PCIe CUDA{d.cuda_index}: failed ({d.error})")
        else:
            out.append(f"  PCIe CUDA{d.cuda_index} ({d.pci_bus_id}): host->device {_gbps(d.h2d_bytes_per_s)},"
                       f" device->host {_gbps(d.d2h_bytes_per_s)}, pinned {human_bytes(d.buffer_bytes)} x {d.samples};"
                       f" {d.measured_at}")
    if not b.disks:
        out.append("  disk: not measured (gpcrun profile --disk PATH)")
    for d in b.disks:
        where = f"{d.path} ({d.fstype or '?'} on {d.device or '?'})"
        if d.skipped_reason:
            out.append(f"  disk {where}: not measured ({d.skipped_reason})")
        else:
            lat = f", {d.rand4k_read_lat_mean_us} us mean" if d.rand4k_read_lat_mean_us is not None else ""
            out.append(f"  disk {where}: sequential 256k QD64 {_gbps(d.seq_read_bytes_per_s)},"
                       f" random 4k QD1 {d.rand4k_read_iops:.0f} IOPS{lat} (fio, direct I/O); {d.measured_at}")
    out.append("")
    c = p.cache
    state = "bandwidths reused" if c.reused else "bandwidths measured now"
    state += "; written" if c.written else "; not written"
    out.append(f"fingerprint {p.fingerprint}; cache {c.path} ({state}" + (f"; {c.reason}" if c.reason else "") + ")")
    return "\n".join(out)
