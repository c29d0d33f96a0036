"""gpcrun.hardware.profile (assembly, cache, fingerprint) and the `gpcrun profile` command."""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, os.path.dirname(__file__))
from fake_nvml import FakeCudart, FakeGpu, FakeNvml  # noqa: E402

from gpcrun.cli.main import main  # noqa: E402
from gpcrun.hardware import profile as profile_mod  # noqa: E402
from gpcrun.hardware.fio import DiskBandwidth  # noqa: E402
from gpcrun.hardware.profile import SCHEMA, fingerprint, get_profile  # noqa: E402

DATA = Path(__file__).parent / "data" / "host"
GiB = 1 << 30


def gpus() -> list[FakeGpu]:
    return [FakeGpu(uuid="GPU-aaaa", bus_id=b"00000000:01:00.0", processes=[(11, 2 << 30)]),
            FakeGpu(uuid="GPU-bbbb", bus_id=b"00000000:02:00.0", name="NVIDIA RTX A6000", total_bytes=48 << 30)]


@pytest.fixture
def counted(monkeypatch):
    """Count the benchmark runs; keep the CPU copy small so the tests stay fast."""
    calls = {"cpu": 0, "disk": 0}
    real_cpu = profile_mod.measure_cpu_copy

    def cpu(buffer_bytes, available_bytes=None):
        calls["cpu"] += 1
        return real_cpu(16 << 20, runs=3, available_bytes=available_bytes)

    monkeypatch.setattr(profile_mod, "measure_cpu_copy", cpu)
    return calls


def prof(tmp_path, backend=None, **kw):
    kw.setdefault("root", str(DATA / "cgroup2_limited"))
    kw.setdefault("env", {})
    return get_profile(nvml_backend=backend or FakeNvml(gpus()), home=tmp_path / "home",
                       pcie_lib=kw.pop("pcie_lib", FakeCudart(count=2)), **kw)


def test_profile_document(tmp_path, counted):
    p = prof(tmp_path)
    doc = p.to_json()
    assert list(doc) == ["schema", "read_at", "fingerprint", "gpus", "host_memory", "platform", "bandwidth", "cache"]
    assert doc["schema"] == SCHEMA == "gpcrun.profile/1"
    assert re.fullmatch(r"sha256:[0-9a-f]{16}", doc["fingerprint"])
    assert [g["uuid"] for g in doc["gpus"]["devices"]] == ["GPU-aaaa", "GPU-bbbb"]
    assert doc["host_memory"]["effective_available_bytes"] == 3 * GiB  # the container's cgroup, not the host
    assert doc["platform"]["container"] == "docker"
    bw = doc["bandwidth"]
    assert bw["cpu_memory"]["bytes_per_s"] > 0 and bw["cpu_memory"]["method"] == "measured:numpy-copyto"
    assert [d["uuid"] for d in bw["pcie"]["devices"]] == ["GPU-aaaa", "GPU-bbbb"]  # matched by PCI bus id
    assert bw["pcie"]["devices"][0]["h2d_bytes_per_s"] > 0 and bw["disks"] == []
    assert doc["cache"]["written"] is True and doc["cache"]["reused"] is False
    cached = json.loads((tmp_path / "home/profile.json").read_text())
    assert cached["schema"] == SCHEMA and cached["fingerprint"] == p.fingerprint and cached["cached_at"]
    assert sorted(os.listdir(tmp_path / "home")) == ["profile.json"]  # no temp file left behind
    json.dumps(doc)


def test_cache_reused_until_refresh_and_volatile_reread(tmp_path, counted):
    fake_gpus = gpus()
    b = FakeNvml(fake_gpus)
    p1 = prof(tmp_path, b)
    fake_gpus[0].used_bytes = 20 << 30  # a server started meanwhile
    fake_gpus[0].temperature_c = 77
    p2 = prof(tmp_path, b)
    assert counted["cpu"] == 1
    assert p2.cache.reused and p2.bandwidth.reused_from_cache
    assert p2.bandwidth.cpu_memory == p1.bandwidth.cpu_memory
    assert p2.bandwidth.pcie.devices == p1.bandwidth.pcie.devices
    assert p2.gpus.devices[0].volatile.used_bytes == 20 << 30 and p2.gpus.devices[0].volatile.temperature_c == 77
    assert p2.fingerprint == p1.fingerprint  # volatile values are not identity
    p3 = prof(tmp_path, b, refresh=True)
    assert counted["cpu"] == 2 and not p3.cache.reused and p3.cache.written


def test_fingerprint_change_invalidates_cache(tmp_path, counted):
    p1 = prof(tmp_path)
    other = gpus()
    other[1].total_bytes = 80 << 30
    p2 = prof(tmp_path, FakeNvml(other))
    assert p2.fingerprint != p1.fingerprint
    assert counted["cpu"] == 2 and "fingerprint changed" in p2.cache.reason
    p3 = prof(tmp_path, FakeNvml(other), root=str(DATA / "plain"))  # other host memory / CPU
    assert p3.fingerprint not in (p1.fingerprint, p2.fingerprint)


def test_fingerprint_function():
    b = FakeNvml(gpus())
    root = str(DATA / "cgroup2_limited")
    a = fingerprint(nvml_backend=b, root=root, env={})
    assert a == fingerprint(nvml_backend=b, root=root, env={})
    assert a != fingerprint(nvml_backend=FakeNvml(gpus()[:1]), root=root, env={})
    assert a != fingerprint(nvml_backend=b, root=str(DATA / "cgroup2_nested"), env={})  # other limit
    assert a != fingerprint(nvml_backend=b, root=root, env={"CUDA_VISIBLE_DEVICES": "1"})


def test_no_gpu_profile(tmp_path, counted):
    p = prof(tmp_path, FakeNvml(init_error=12), pcie_lib=None)
    assert p.gpus.devices == () and "libnvidia-ml" in p.gpus.reason
    assert p.bandwidth.pcie.skipped_reason == "no GPU visible (NVML lists none)"
    assert p.bandwidth.cpu_memory.bytes_per_s > 0


def test_measure_false_runs_nothing(tmp_path, counted):
    p = prof(tmp_path, measure=False)
    assert counted["cpu"] == 0 and p.bandwidth.cpu_memory is None
    assert "not measured" in p.bandwidth.cpu_memory_reason and "not measured" in p.bandwidth.pcie.skipped_reason
    assert not p.cache.written and not (tmp_path / "home/profile.json").exists()


def test_unwritable_cache_is_reported_not_fatal(tmp_path, counted):
    (tmp_path / "home").write_text("a file where the directory should be")
    p = prof(tmp_path)
    assert not p.cache.written and "cache not written" in p.cache.reason
    assert p.bandwidth.cpu_memory is not None


def test_corrupt_cache_is_measured_again(tmp_path, counted):
    (tmp_path / "home").mkdir()
    (tmp_path / "home/profile.json").write_text("{not json")
    p = prof(tmp_path)
    assert counted["cpu"] == 1 and "cache unreadable" in p.cache.reason and p.cache.written


def test_disk_results_are_cached_per_path(tmp_path, counted, monkeypatch):
    def fake_disk(path, root="/", size_bytes=0, runtime_s=0):
        counted["disk"] += 1
        return DiskBandwidth(os.path.realpath(path), "ext4", "/", "/dev/sda1", None, seq_read_bytes_per_s=2 * 10**9,
                             seq_read_iops=7600.0, rand4k_read_bytes_per_s=40 * 10**6, rand4k_read_iops=9800.0,
                             rand4k_read_lat_mean_us=101.0, measured_at="2026-01-01T00:00:00+00:00")

    monkeypatch.setattr(profile_mod, "measure_disk", fake_disk)
    d1, d2 = tmp_path / "d1", tmp_path / "d2"
    d1.mkdir()
    d2.mkdir()
    prof(tmp_path, disk=str(d1))
    p = prof(tmp_path, disk=str(d2))
    assert counted["disk"] == 2 and [d.path for d in p.bandwidth.disks] == [str(d1), str(d2)]
    p = prof(tmp_path)  # no --disk: earlier measurements still reported
    assert counted["disk"] == 2 and len(p.bandwidth.disks) == 2
    p = prof(tmp_path, disk=str(d1), refresh=True)
    assert counted["disk"] == 3 and [d.path for d in p.bandwidth.disks] == [str(d1)]


def test_disk_refusal_is_in_the_profile(tmp_path, counted):
    d = tmp_path / "models"
    d.mkdir()
    p = prof(tmp_path, disk=str(d))  # the cgroup2_limited tree's "/" is overlay
    (r,) = p.bandwidth.disks
    assert r.skipped_reason.startswith("refused") and "overlay" in r.skipped_reason


# ---------------------------------------------------------------- CLI

def test_cli_profile_json_and_text(tmp_path):
    runner = CliRunner()
    env = {"GPCRUN_HOME": str(tmp_path / "home")}
    res = runner.invoke(main, ["profile", "--json"], env=env)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["schema"] == SCHEMA and doc["cache"]["written"]
    assert doc["host_memory"]["total_bytes"] > 0 and doc["bandwidth"]["cpu_memory"]["bytes_per_s"] > 0
    res = runner.invoke(main, ["profile"], env=env)
    assert res.exit_code == 0, res.output
    out = res.output
    for section in ("GPU", "Host memory:", "cgroup", "Platform:", "Bandwidth (measured values from the cache"):
        assert section in out
    assert "effective available" in out and "GB/s read+write" in out and "fingerprint sha256:" in out
    if not doc["gpus"]["devices"]:
        assert f"GPUs: none ({doc['gpus']['reason']})" in out


def test_cli_profile_disk_option(tmp_path, monkeypatch, counted):
    seen = []
    monkeypatch.setattr(profile_mod, "measure_disk", lambda path, **kw: seen.append(path) or DiskBandwidth(
        os.path.realpath(path), "overlay", "/", "overlay", "refused: test"))
    res = CliRunner().invoke(main, ["profile", "--disk", str(tmp_path)], env={"GPCRUN_HOME": str(tmp_path / "h")})
    assert res.exit_code == 0, res.output
    assert seen == [str(tmp_path)] and "not measured (refused: test)" in res.output
    res = CliRunner().invoke(main, ["profile", "--disk", str(tmp_path / "missing")])
    assert res.exit_code == 2  # click's usage error: the path must exist


def test_render_text_unknowns_and_gpus(tmp_path, counted):
    from gpcrun.cli.profile_cmd import render_text
    g = gpus()
    g[0].not_supported = {"nvmlDeviceGetPowerUsage"}
    p = prof(tmp_path, FakeNvml(g), root=str(DATA / "cgroup1_hybrid"))
    out = render_text(p)
    assert "CUDA0 (NVML 0) NVIDIA GeForce RTX 4090" in out and "CUDA1 (NVML 1) NVIDIA RTX A6000" in out
    assert "power unknown (nvmlDeviceGetPowerUsage: Not Supported" in out
    assert "pid 11 2.00 GiB" in out
    assert "memory limit 2.00 GiB at /process_api/" in out and "oom kills 3" in out
    assert "PCIe CUDA1 (0000:02:00.0): host->device" in out
