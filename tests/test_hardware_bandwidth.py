"""Measured bandwidths: numpy CPU copy, PCIe through cudart (fake lib / skip path), disks through fio."""
from __future__ import annotations

import errno
import importlib.util
import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

from gpcrun.hardware import cudart, fio, membw
from gpcrun.hardware.cudart import measure_pcie, normalize_bus_id
from gpcrun.hardware.fio import direct_io_problem, measure_disk
from gpcrun.hardware.nvml import read_gpus

DATA = Path(__file__).parent / "data" / "host"
sys.path.insert(0, os.path.dirname(__file__))
from fake_nvml import FakeCudart  # noqa: E402


# ---------------------------------------------------------------- CPU memory

def test_cpu_copy_bandwidth_is_positive_with_provenance():
    r = membw.measure_cpu_copy(buffer_bytes=32 << 20, runs=5)
    assert r.bytes_per_s > 0 and r.best_bytes_per_s >= r.bytes_per_s
    assert r.method == "measured:numpy-copyto" and r.buffer_bytes == 32 << 20
    assert r.samples == len(r.sample_s) >= 3 and all(s > 0 for s in r.sample_s)
    assert "read + write" in r.note and r.measured_at
    assert membw.CopyBandwidth.from_json(json.loads(json.dumps(r.to_json()))) == r


def test_cpu_copy_buffer_shrinks_to_fit_memory():
    assert membw.buffer_size_for(None, 256 << 20) == 256 << 20
    assert membw.buffer_size_for(64 << 30, 256 << 20) == 256 << 20
    assert membw.buffer_size_for(1 << 30, 256 << 20) == 128 << 20
    assert membw.buffer_size_for(10 << 20, 256 << 20) == 16 << 20  # never below the floor


# ---------------------------------------------------------------- PCIe

def test_pcie_skips_without_gpu():
    r = measure_pcie(0)
    assert r.devices == () and "no GPU" in r.skipped_reason


def test_pcie_skips_without_cudart(monkeypatch):
    monkeypatch.setattr(cudart, "_SONAMES", ("libcudart-does-not-exist.so",))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)  # no nvidia-cuda-runtime wheel
    r = measure_pcie(1)
    assert r.devices == () and "libcudart not found" in r.skipped_reason


def test_pcie_skips_when_driver_too_old():
    r = measure_pcie(1, lib=FakeCudart(rc_count=35))
    assert r.devices == () and "insufficient" in r.skipped_reason and "35" in r.skipped_reason


def test_pcie_real_cudart_without_gpu_skips_cleanly():
    if read_gpus().devices:
        pytest.skip("a GPU is present: the no-GPU skip path is not reachable here")
    r = measure_pcie(1)  # pretend NVML saw one: whatever cudart this host has must still refuse cleanly
    assert r.devices == () and r.skipped_reason
    json.dumps(r.to_json())


def test_pcie_measures_with_a_working_runtime():
    lib = FakeCudart(count=2)
    r = measure_pcie(2, buffer_bytes=1 << 20, runs=3, lib=lib)
    assert r.skipped_reason is None and len(r.devices) == 2
    d = r.devices[1]
    assert d.cuda_index == 1 and d.pci_bus_id == "0000:02:00.0"
    assert d.h2d_bytes_per_s > 0 and d.d2h_bytes_per_s > 0 and d.samples == 3 and d.error is None
    assert d.method == "measured:cudart-memcpy-pinned" and d.buffer_bytes == 1 << 20
    assert lib.copies == 2 * 2 * (3 + 1)  # both devices, both directions, warm-up + runs
    assert lib.freed.count("host") == 2 and lib.freed.count("device") == 2 and lib.freed.count("context") == 2
    assert cudart.PcieResult.from_json(json.loads(json.dumps(r.to_json()))) == r


def test_pcie_allocation_failure_is_reported_and_freed():
    lib = FakeCudart(fail={"cudaMalloc": 2})
    d = measure_pcie(1, lib=lib).devices[0]
    assert d.h2d_bytes_per_s is None and "cudaMalloc: out of memory" in d.error
    assert lib.freed == ["host", "context"]  # the pinned buffer it did get is released, the context dropped


def test_normalize_bus_id_matches_nvml_and_cuda_spellings():
    assert normalize_bus_id("00000000:0A:00.0") == normalize_bus_id("0000:0a:00.0") == "0000:0a:00.0"
    assert normalize_bus_id(None) is None


# ---------------------------------------------------------------- disks (fio)

def test_fio_refuses_overlay_from_the_mount_table(tmp_path):
    # the captured container tree mounts "/" as overlay: any path there must be refused, not measured
    r = measure_disk(str(tmp_path), root=str(DATA / "cgroup2_limited"))
    assert r.skipped_reason and "overlay" in r.skipped_reason and r.seq_read_bytes_per_s is None
    assert r.fstype == "overlay" and r.mount_point == "/"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("tree,path,words", [("wsl2", "/mnt/c/models", "9p"), ("plain", "/tmp/models", "tmpfs")])
def test_fio_refuses_9p_and_tmpfs(tree, path, words):
    r = measure_disk(path, root=str(DATA / tree))
    assert r.skipped_reason.startswith("refused") and words in r.skipped_reason


def test_fio_refuses_without_o_direct(tmp_path, monkeypatch):
    real_open = os.open

    def no_direct(p, flags, *a):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(p, flags, *a)

    monkeypatch.setattr(fio.os, "open", no_direct)
    assert "O_DIRECT not supported" in direct_io_problem(str(tmp_path))
    root = _ext4_root(tmp_path)
    r = measure_disk(str(tmp_path), root=root, fio_bin=shutil.which("fio") or "/bin/true")
    assert "O_DIRECT not supported" in r.skipped_reason and "page cache" in r.skipped_reason
    assert [p.name for p in tmp_path.iterdir()] == ["root"]  # the probe file is gone


def _ext4_root(tmp_path: Path) -> str:
    """A fake root whose mount table says everything is ext4 (to get past the fstype check)."""
    r = tmp_path / "root"
    (r / "proc/self").mkdir(parents=True)
    (r / "proc/self/mountinfo").write_text("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n")
    return str(r)


def test_fio_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(fio.shutil, "which", lambda name: None)
    r = measure_disk(str(tmp_path), root=_ext4_root(tmp_path))
    assert "fio not found" in r.skipped_reason


def test_fio_failure_still_removes_the_test_file(tmp_path):
    if direct_io_problem(str(tmp_path)):
        pytest.skip(f"{tmp_path}: {direct_io_problem(str(tmp_path))}")
    fake = tmp_path / "fake-fio"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do case "$a" in --filename=*) : > "${a#--filename=}";; esac; done\n'
                    'echo "fio: io_u error: Input/output error" >&2\nexit 1\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    data = tmp_path / "data"
    data.mkdir()
    r = measure_disk(str(data), root=_ext4_root(tmp_path), fio_bin=str(fake), size_bytes=1 << 20)
    assert r.skipped_reason == "fio exited 1: fio: io_u error: Input/output error"
    assert list(data.iterdir()) == []


def test_fio_real_pass_on_a_tmp_dir(tmp_path):
    if not shutil.which("fio"):
        pytest.skip("fio is not installed (apt-get install -y fio)")
    r = measure_disk(str(tmp_path), size_bytes=16 << 20, runtime_s=1)
    if r.skipped_reason and r.skipped_reason.startswith("refused"):
        pytest.skip(f"{tmp_path} cannot be measured here: {r.skipped_reason}")
    assert r.skipped_reason is None, r.skipped_reason
    assert r.seq_read_bytes_per_s > 0 and r.seq_read_iops > 0
    assert r.rand4k_read_iops > 0 and r.rand4k_read_bytes_per_s > 0 and r.rand4k_read_lat_mean_us > 0
    assert r.method == "measured:fio" and r.fio_version.startswith("fio-")
    assert r.params["direct"] == 1 and r.params["ioengine"] == "libaio" and r.params["seq"]["iodepth"] == 64
    assert r.fstype and r.mount_point and r.measured_at
    assert list(tmp_path.iterdir()) == []  # test file removed
    assert fio.DiskBandwidth.from_json(json.loads(json.dumps(r.to_json()))) == r
