"""Devices from llama.cpp's own list (hardware/llama_devices.py): `--rpc` servers become planning devices, the plan
spreads a model over two ggml-rpc-servers capped below its size, and the real llama-server loads that plan with
the bytes per device the plan says."""
from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import time

import pytest

from gpcrun.hardware.llama_devices import parse_list_devices
from tests.llama_server import RealServer, free_port

MIB = 1 << 20


@pytest.mark.parametrize("text,want", [
    ("Available devices:\n  (none)\n", []),
    ("Available devices:\n  RPC0: 127.0.0.1:50554 (24105 MiB, 24105 MiB free)\n",
     [("RPC0", "127.0.0.1:50554", 24105, 24105)]),
    ("ggml_cuda_init: found 1 CUDA devices\nAvailable devices:\n"
     "  CUDA0: NVIDIA GeForce RTX 4090 (rev a1) (24563 MiB, 23012 MiB free)\n"
     "  Vulkan0: AMD Radeon 780M (Graphics) (16384 MiB, 12000 MiB free)\n",
     [("CUDA0", "NVIDIA GeForce RTX 4090 (rev a1)", 24563, 23012), ("Vulkan0", "AMD Radeon 780M (Graphics)", 16384,
                                                                    12000)]),
])
def test_parse_list_devices(text, want):
    got = [(d.name, d.description, d.total_bytes // MIB, d.free_bytes // MIB) for d in parse_list_devices(text)]
    assert got == want


@contextlib.contextmanager
def _rpc_servers(bin_dir, n: int):
    procs, ports = [], []
    try:
        for _ in range(n):
            port = free_port()
            procs.append(subprocess.Popen([str(bin_dir / "ggml-rpc-server"), "-H", "127.0.0.1", "-p", str(port),
                                           "-t", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            ports.append(port)
        deadline = time.monotonic() + 20
        for port in ports:
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "ggml-rpc-server did not listen"
                    time.sleep(0.05)
        yield ",".join(f"127.0.0.1:{p}" for p in ports)
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _gpcrun(*args, env=None):
    import os
    import sys
    e = dict(os.environ, GPCRUN_CALIBRATE="off", **(env or {}))
    return subprocess.run([sys.executable, "-m", "gpcrun", *args], capture_output=True, text=True, env=e, timeout=300)


@pytest.mark.server
def test_a_model_split_over_two_capped_rpc_servers_loads_as_planned(llama_bin_dir, llama_server_bin, tiny_models,
                                                                      tmp_path):
    """Each rpc server may hold 10 MiB, less than the 12.7 MiB model: the plan uses both (and the host), and
    llama-server loads exactly that: model and KV bytes per device as planned (2-decimal MiB rounding)."""
    model = tiny_models["tiny-llama-f16"]
    with _rpc_servers(llama_bin_dir, 2) as endpoints:
        p = _gpcrun("plan", str(model), "--margin", "0", "--device-memory", "RPC0=10", "--device-memory", "RPC1=10",
                    "--json", "--", "--rpc", endpoints, "-c", "2048",
                    env={"GPCRUN_LLAMA_SERVER": str(llama_server_bin)})
        assert p.returncode == 0, p.stderr
        plan = json.loads(p.stdout)
        mem = {m["device"]: m for m in plan["plan"]["memory"]}
        assert set(mem) == {"CPU", "RPC0", "RPC1"}
        assert mem["RPC0"]["model_bytes"] > 0 and mem["RPC1"]["model_bytes"] > 0
        assert all(mem[d]["total_bytes"] <= 10 * MIB for d in ("RPC0", "RPC1"))
        argv = plan["argv"][2:]  # after -m MODEL
        with RealServer(llama_server_bin, model, *argv, "-lv", "4", "--no-warmup",
                        log_path=tmp_path / "server.log") as srv:
            log = srv.log()
    got: dict[str, dict[str, float]] = {}
    for dev, col, mib in re.findall(r"(\S+) (model|KV) buffer size =\s+([\d.]+) MiB", log):
        name = "CPU" if dev.startswith("CPU") else ("RPC0" if endpoints.split(",")[0] in dev else "RPC1")
        got.setdefault(name, {})[col] = got.get(name, {}).get(col, 0.0) + float(mib)
    for name, m in mem.items():
        assert abs(got.get(name, {}).get("model", 0.0) - m["model_bytes"] / MIB) <= 0.006, (name, got, m)
        assert abs(got.get(name, {}).get("KV", 0.0) - m["context_bytes"] / MIB) <= 0.006, (name, got, m)


def test_an_rpc_server_that_does_not_answer_is_exit_11_in_one_line(tiny_models, llama_server_bin):
    port = free_port()  # nothing listens there
    p = _gpcrun("plan", str(tiny_models["tiny-llama-q8_0"]), "--", "--rpc", f"127.0.0.1:{port}",
                env={"GPCRUN_LLAMA_SERVER": str(llama_server_bin)})
    assert p.returncode == 11, p.stderr
    assert f"Failed to connect to 127.0.0.1:{port}" in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_device_flag_keeps_only_the_named_devices():
    """`--device RPC1` offloads to RPC1 only; `--device none` to nothing (common/arg.cpp parse_device_list)."""
    from gpcrun.plan import DeviceTarget, Target
    from gpcrun.devices import only_devices as _only
    host = DeviceTarget("CPU", "host", 1 << 30, 1e10)
    t = Target(host, (DeviceTarget("RPC0", "gpu", 1, None), DeviceTarget("RPC1", "gpu", 2, None),
                      DeviceTarget("CUDA0", "gpu", 3, None)))
    assert [g.name for g in _only(t, ["RPC1", "CUDA0"]).gpus] == ["RPC1", "CUDA0"]
    assert _only(t, ["none"]).gpus == ()
    assert _only(t, None) is t


def test_split_mode_none_keeps_the_main_gpu_and_row_is_said_to_be_approximate():
    """`-sm none` drops every device but `-mg` (src/llama.cpp:288-301); `-sm row` is planned as a layer split and
    the plan says so."""
    from gpcrun.devices import split_mode_devices, with_split_mode_note
    from gpcrun.plan import DeviceTarget, Plan, Target
    from gpcrun.server_args import ServerArgs
    host = DeviceTarget("CPU", "host", 1 << 30, 1e10)
    t = Target(host, (DeviceTarget("CUDA0", "gpu", 1, None), DeviceTarget("CUDA1", "gpu", 2, None)))
    names = lambda args: [g.name for g in split_mode_devices(t, ServerArgs.parse(args)).gpus]  # noqa: E731
    assert names(["-sm", "none"]) == ["CUDA0"]
    assert names(["-sm", "none", "-mg", "1"]) == ["CUDA1"]
    assert names(["-sm", "none", "-mg", "-1"]) == []
    assert names(["-sm", "layer", "-mg", "1"]) == ["CUDA0", "CUDA1"]
    assert names([]) == ["CUDA0", "CUDA1"]
    plan = Plan("ship", (), None, None, (), t, 0)
    with_note = lambda args: with_split_mode_note(plan, ServerArgs.parse(args)).notes  # noqa: E731
    assert with_note(["-sm", "row"]) and "layer split across CUDA0, CUDA1" in with_note(["-sm", "row"])[0]
    assert with_note(["-sm", "layer"]) == () and with_note([]) == ()


def test_an_rpc_server_busy_with_another_client_is_a_one_line_error(llama_bin_dir, llama_server_bin, tiny_models,
                                                                    tmp_path):
    """ggml-rpc-server serves one client at a time: while a llama-server holds it, --list-devices waits; gpcrun
    gives up at its timeout with a line that says why, instead of hanging."""
    from gpcrun.errors import DeviceListError
    from gpcrun.hardware.llama_devices import list_devices
    with _rpc_servers(llama_bin_dir, 1) as endpoints:
        assert [d.backend for d in list_devices(str(llama_server_bin), ["--rpc", endpoints])] == ["RPC"]
        with RealServer(llama_server_bin, tiny_models["tiny-llama-f16"], "--rpc", endpoints, "-ngl", "99",
                        "-c", "512", log_path=tmp_path / "server.log"):
            with pytest.raises(DeviceListError, match="serves one client at a time"):
                list_devices(str(llama_server_bin), ["--rpc", endpoints], timeout_s=2)


def test_a_gpu_nvml_does_not_know_is_planned_from_llama_cpps_list(tmp_path, monkeypatch, tiny_models):
    """A Vulkan GPU (a fake llama-server prints its list: no Vulkan device exists on this machine): the plan
    offloads to it within the memory llama.cpp reports, and says the watchdog cannot read that memory."""
    from gpcrun.model import load_model
    from gpcrun.planning import ResolvedModel, build_request, build_target, plan_model
    from gpcrun.planning import server_args as parse
    fake = tmp_path / "llama-server"
    fake.write_text("#!/bin/sh\necho 'Available devices:'\n"
                    "echo '  Vulkan0: AMD Radeon RX 7900 XTX (RADV NAVI31) (24560 MiB, 24000 MiB free)'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("GPCRUN_LLAMA_SERVER", str(fake))
    monkeypatch.setenv("GPCRUN_CALIBRATE", "off")
    target = build_target()
    (gpu,) = target.gpus
    assert (gpu.name, gpu.capacity_bytes) == ("Vulkan0", 24000 * MIB)
    assert gpu.source.startswith("llama-server --list-devices: Vulkan0 AMD Radeon RX 7900 XTX")
    path = tiny_models["tiny-llama-q8_0"]
    sa = parse(["-c", "2048"], {})
    req = build_request(None, None, 1, 1.0, None, sa)
    plan = plan_model(ResolvedModel(str(path), load_model(str(path)), None), req, target, sa)
    mem = {m.device: m for m in plan.chosen.memory}
    assert mem["Vulkan0"].model_bytes > 0
    assert any("not Vulkan0: no memory reading for that backend" in n for n in plan.notes), plan.notes


def test_an_integrated_gpu_on_shared_memory_is_counted_against_the_host_too(tmp_path, monkeypatch, tiny_models):
    """A Vulkan iGPU reporting the host's RAM as its own (UMA): planned with shares_host_memory, the host must hold
    its buffers beside its own, the watchdog watches it as host memory; listed beside a discrete GPU it is dropped,
    as llama.cpp adds integrated GPUs only when no discrete one exists (src/llama.cpp:280-285)."""
    from gpcrun.hardware.llama_devices import parse_list_devices
    from gpcrun.model import load_model
    from gpcrun.planning import ResolvedModel, build_request, build_target, plan_model
    from gpcrun.planning import server_args as parse
    from gpcrun.targets import gpus_from_llama
    host_total = build_target().host.limit_bytes
    igpu = f"  Vulkan0: AMD Radeon(TM) 890M Graphics (RADV GFX1150) ({host_total >> 20} MiB, 4000 MiB free)"
    dgpu = "  Vulkan1: AMD Radeon RX 7900 XTX (RADV NAVI31) (24560 MiB, 24000 MiB free)"
    (g,) = gpus_from_llama(parse_list_devices("Available devices:\n" + igpu), host_total)
    assert g.shares_host_memory and "shares host memory" in g.source
    both = gpus_from_llama(parse_list_devices("\n".join(["Available devices:", igpu, dgpu])), host_total)
    assert [x.name for x in both] == ["Vulkan1"]
    fake = tmp_path / "llama-server"
    fake.write_text(f"#!/bin/sh\necho 'Available devices:'\necho '{igpu}'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("GPCRUN_LLAMA_SERVER", str(fake))
    monkeypatch.setenv("GPCRUN_CALIBRATE", "off")
    target = build_target()
    path = tiny_models["tiny-llama-q8_0"]
    sa = parse(["-c", "2048", "-ngl", "99"], {})
    req = build_request(None, None, 1, 1.0, None, sa)
    plan = plan_model(ResolvedModel(str(path), load_model(str(path)), None), req, target, sa)
    host, gpu = plan.chosen.memory
    assert gpu.device == "Vulkan0" and gpu.self_bytes > 0
    assert host.other_bytes >= gpu.self_bytes  # the iGPU's buffers are host memory
    assert any("Vulkan0 shares this host's memory" in n for n in plan.notes), plan.notes
    assert not any("no memory reading for that backend" in n for n in plan.notes), plan.notes
