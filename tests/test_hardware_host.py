"""gpcrun.hardware.host on captured /proc & /sys trees (tests/data/host), live, and inside a real limited cgroup."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpcrun.hardware import host
from gpcrun.hardware.host import (mount_for, parse_cpuinfo, parse_mountinfo, parse_pressure, read_cgroup_memory,
                                  read_host_memory, read_platform)
from tests.proc_util import limited_child_cgroup

DATA = Path(__file__).parent / "data" / "host"
GiB = 1 << 30
MiB = 1 << 20


def tree(name: str) -> str:
    return str(DATA / name)


# ---------------------------------------------------------------- parsers

def test_parse_mountinfo_escapes_and_optional_fields():
    ms = parse_mountinfo((DATA / "plain/proc/self/mountinfo").read_text())
    by_mp = {m.mount_point: m for m in ms}
    assert by_mp["/mnt/my models"].fstype == "xfs"  # \040 unescaped
    assert by_mp["/sys/fs/cgroup"].fstype == "cgroup2"
    assert by_mp["/"].source == "/dev/nvme0n1p3" and by_mp["/"].super_options.startswith("rw")
    assert mount_for("/mnt/my models/llama/x.gguf", ms).mount_point == "/mnt/my models"
    assert mount_for("/mnt/my", ms).mount_point == "/"
    assert mount_for("/tmp", ms).fstype == "tmpfs"
    assert mount_for("/tmpx/a", ms).mount_point == "/"


def test_mount_for_takes_the_later_of_stacked_mounts():
    text = ("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"
            "2 1 0:5 / /data rw - ext4 /dev/sdb1 rw\n"
            "3 1 0:6 / /data rw - tmpfs tmpfs rw\n")
    assert mount_for("/data/x", parse_mountinfo(text)).fstype == "tmpfs"


def test_parse_pressure():
    p = parse_pressure("some avg10=1.50 avg60=0.75 avg300=0.20 total=123456\n"
                       "full avg10=0.50 avg60=0.25 avg300=0.05 total=65432\n", "x")
    assert (p.some_avg10_pct, p.some_avg60_pct, p.some_total_us) == (1.5, 0.75, 123456)
    assert (p.full_avg10_pct, p.full_avg60_pct, p.full_total_us) == (0.5, 0.25, 65432)
    only_some = parse_pressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n", "y")
    assert only_some.full_avg10_pct is None and only_some.some_total_us == 5
    assert parse_pressure("garbage", "z") is None


def test_parse_cpuinfo_counts_cores_and_threads():
    ci = parse_cpuinfo((DATA / "plain/proc/cpuinfo").read_text())
    assert ci["model"] == "AMD Ryzen 9 7950X 16-Core Processor"
    assert (ci["logical"], ci["physical"]) == (32, 16)
    assert {"avx2", "avx512f"} <= ci["flags"]


# ---------------------------------------------------------------- cgroup v2

def test_cgroup2_limited_container():
    m = read_host_memory(tree("cgroup2_limited"))
    assert m.total_bytes == 64 * GiB and m.available_bytes == 48 * GiB
    assert m.sources["total_bytes"] == "proc:meminfo:MemTotal"
    assert (m.swap_total_bytes, m.swap_free_bytes) == (8 * GiB, 8 * GiB)
    c = m.cgroup
    assert (c.version, c.path, c.limit_cgroup) == (2, "/", "/")
    assert (c.max_bytes, c.current_bytes, c.headroom_bytes) == (4 * GiB, 1 * GiB, 3 * GiB)
    assert c.swap_max_bytes == 0 and c.oom_kill_count == 2
    assert c.sources["max_bytes"] == "cgroup2:memory.max@/"
    assert c.sources["oom_kill_count"] == "cgroup2:memory.events:oom_kill"
    p = c.pressure
    assert p.source == "cgroup2:memory.pressure@/" and p.some_avg10_pct == 1.5 and p.full_total_us == 65432
    # the point of it all: 48 GiB free on the host, 3 GiB for us
    assert m.effective_available_bytes == 3 * GiB and m.effective_limit_bytes == 4 * GiB
    assert "cgroup2:memory.max-memory.current@/" in m.sources["effective_available_bytes"]
    json.dumps(m.to_json())


def test_cgroup2_page_cache_is_not_counted_as_used():
    """A 1.2 GB file read in the container: memory.current 1.75 GiB, 1.125 GiB of it inactive page cache. The
    headroom is what the kernel cannot give back: 4 - (1.75 - 1.125) = 3.375 GiB, not 2.25 GiB."""
    m = read_host_memory(tree("cgroup2_page_cache"))
    c = m.cgroup
    assert c.current_bytes == 1792 * MiB and c.headroom_bytes == 4 * GiB - 1792 * MiB + 1152 * MiB
    assert c.sources["headroom_bytes"] == "cgroup2:memory.max-(memory.current-memory.stat:inactive_file)@/"
    assert m.effective_available_bytes == c.headroom_bytes


def test_cgroup2_nested_ancestors_tightest_headroom():
    m = read_host_memory(tree("cgroup2_nested"))
    c = m.cgroup
    ctr = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-abcdef.scope"
    pod = ctr.rsplit("/", 1)[0]
    assert c.path == ctr
    assert c.limit_cgroup == ctr and c.max_bytes == 12 * GiB and c.current_bytes == 4 * GiB
    assert c.headroom_bytes == 1 * GiB and c.sources["headroom_bytes"].endswith("@" + pod)  # 16 - 15 GiB
    assert c.swap_max_bytes is None and "no limit" in c.unknown["swap_max_bytes"]
    assert m.effective_available_bytes == 1 * GiB and m.effective_limit_bytes == 12 * GiB
    assert c.pressure is None  # no PSI file anywhere in this tree


def test_plain_host_has_no_limit():
    m = read_host_memory(tree("plain"))
    c = m.cgroup
    assert c.version == 2 and c.path == "/user.slice/user-1000.slice/session-3.scope"
    assert c.max_bytes is None and c.headroom_bytes is None and "no memory limit" in c.unknown["max_bytes"]
    assert c.oom_kill_count == 0
    assert c.pressure.source.endswith("@/user.slice/user-1000.slice/session-3.scope")
    assert m.effective_available_bytes == m.available_bytes == 100 * GiB
    assert m.effective_limit_bytes == 128 * GiB and m.sources["effective_limit_bytes"] == "proc:meminfo:MemTotal"


# ---------------------------------------------------------------- cgroup v1

def test_cgroup1_hybrid_walks_ancestors():
    m = read_host_memory(tree("cgroup1_hybrid"))
    c = m.cgroup
    leaf = "/process_api/2e62817316033cb20ce9d8ce1a8fab86"
    assert c.version == 1 and c.path == leaf
    assert c.limit_cgroup == leaf and c.max_bytes == 2 * GiB and c.current_bytes == 1 * GiB
    # the parent (3 GiB, 2.5 used) leaves less than the leaf's own limit
    assert c.headroom_bytes == GiB // 2 and c.sources["headroom_bytes"].endswith("@/process_api")
    assert c.swap_max_bytes == 2 * GiB and c.sources["swap_max_bytes"].startswith("cgroup1:memory.memsw")
    assert c.oom_kill_count == 3 and c.sources["oom_kill_count"] == "cgroup1:memory.oom_control:oom_kill"
    assert c.pressure.source == "cgroup2:memory.pressure@/"  # PSI from the v2 'unified' mount of a hybrid
    assert m.effective_available_bytes == GiB // 2 and m.effective_limit_bytes == 2 * GiB


def test_cgroup1_hidden_parent_via_hierarchical_limit():
    m = read_host_memory(tree("cgroup1_hidden_parent"))
    c = m.cgroup
    assert c.version == 1 and c.path == "/docker/abc123"
    assert c.max_bytes == 6 * GiB and "hierarchical_memory_limit" in c.sources["max_bytes"]
    assert c.headroom_bytes == 6 * GiB - (512 << 20)
    assert c.oom_kill_count is None and "oom_kill" in c.unknown["oom_kill_count"]
    assert m.effective_limit_bytes == 6 * GiB


def test_no_cgroup_mounted(tmp_path):
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/mountinfo").write_text("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n")
    (tmp_path / "proc/self/cgroup").write_text("0::/\n")
    (tmp_path / "proc/meminfo").write_text("MemTotal: 1000 kB\nMemAvailable: 500 kB\n")
    m = read_host_memory(str(tmp_path))
    assert m.cgroup is None and m.effective_available_bytes == 500 * 1024
    assert m.swap_total_bytes is None and "SwapTotal" in m.unknown["swap_total_bytes"]


def test_cgroup_path_outside_mounted_subtree(tmp_path):
    # nested namespaces show "/../x": only the mount's top is readable, and the profile says so
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/mountinfo").write_text("1 0 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
    (tmp_path / "proc/self/cgroup").write_text("0::/../other\n")
    cg = tmp_path / "sys/fs/cgroup"
    cg.mkdir(parents=True)
    (cg / "memory.max").write_text(f"{GiB}\n")
    (cg / "memory.current").write_text(f"{GiB // 4}\n")
    c = read_cgroup_memory(str(tmp_path))
    assert c.max_bytes == GiB and "outside the mounted subtree" in c.unknown["cgroup_dirs"]


# ---------------------------------------------------------------- platform

def test_platform_vm_with_amx_warns():
    p = read_platform(tree("cgroup2_limited"), env={})
    assert p.container == "docker" and "file:/.dockerenv" in p.container_evidence
    assert p.wsl is None and p.uvm_oversubscription_supported is True
    assert p.cpu_model == "Intel(R) Xeon(R) Platinum 8480+"
    assert (p.cores_logical, p.cores_physical) == (8, 4)
    assert p.cpu_quota_cores == 2.0 and p.sources["cpu_quota_cores"] == "cgroup2:cpu.max@/"
    assert {"amx_tile", "amx_int8", "amx_bf16", "avx512f", "avx512_fp16", "avx2"} <= set(p.isa)
    assert "sse" not in p.isa and "hypervisor" not in p.isa
    assert p.hypervisor is True
    assert any("AMX" in w and "SIGILL" in w for w in p.warnings)
    assert any("quota" in w for w in p.warnings)
    assert p.distro == "Ubuntu 24.04.1 LTS" and p.kernel_release == "6.8.0-45-generic" and p.os == "Linux"
    assert p.arch is None and p.amx_permitted is None  # only read for the live root
    json.dumps(p.to_json())


def test_platform_wsl2():
    p = read_platform(tree("wsl2"), env={})
    assert p.wsl == "wsl2"
    assert p.uvm_oversubscription_supported is False and "WSL" in p.sources["uvm_oversubscription_supported"]
    assert p.hypervisor is True and not any("AMX" in w for w in p.warnings)
    assert p.container is None


def test_platform_wsl1_kernel_string(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/version").write_text("Linux version 4.4.0-19041-Microsoft (Microsoft@Microsoft.com)\n")
    assert read_platform(str(tmp_path), env={}).wsl == "wsl1"


def test_platform_plain_bare_metal():
    p = read_platform(tree("plain"), env={})
    assert p.container is None and p.container_evidence == () and p.wsl is None
    assert p.hypervisor is False and p.warnings == ()
    assert p.cpu_quota_cores is None and "no CPU quota" in p.unknown["cpu_quota_cores"]
    assert (p.cores_physical, p.cores_logical) == (16, 32)


def test_container_detection_kubernetes_and_podman(tmp_path):
    p = read_platform(tree("cgroup2_nested"), env={"KUBERNETES_SERVICE_HOST": "10.0.0.1"})
    assert p.container == "kubernetes"
    assert p.container_evidence == ("env:KUBERNETES_SERVICE_HOST", "cgroup-path:kubepods")
    assert p.cpu_quota_cores == 3.0  # the pod's 3 cores are tighter than the container's 4
    (tmp_path / "run").mkdir()
    (tmp_path / "run/.containerenv").write_text("engine=\"podman-4.9\"\n")
    assert read_platform(str(tmp_path), env={}).container == "podman"


def test_cgroup1_cpu_quota():
    p = read_platform(tree("cgroup1_hidden_parent"), env={})
    assert p.cpu_quota_cores == 1.5 and p.sources["cpu_quota_cores"].startswith("cgroup1:cpu.cfs_quota_us")


# ---------------------------------------------------------------- live machine

def test_live_host_memory_and_platform():
    m = read_host_memory()
    assert m.total_bytes > 0 and 0 < m.available_bytes <= m.total_bytes
    assert m.sources["total_bytes"] == "psutil:virtual_memory"
    assert 0 < m.effective_available_bytes <= m.available_bytes
    assert m.effective_limit_bytes <= m.total_bytes
    p = read_platform()
    assert p.cores_logical >= 1 and p.arch
    assert p.cpus_usable is not None and p.cpus_usable <= p.cores_logical
    json.dumps(m.to_json())
    json.dumps(p.to_json())


def test_read_host_memory_is_cheap():
    t0 = time.perf_counter()
    for _ in range(20):
        read_host_memory()
    assert (time.perf_counter() - t0) / 20 < 0.05


# ---------------------------------------------------------------- a real limited cgroup



def test_profile_inside_a_real_memory_limited_cgroup(tmp_path):
    limit = 2 * GiB  # never below ~1 GiB; only the child process is moved in
    child, version = limited_child_cgroup(limit, "gpcrun-test")
    procs = os.path.join(child, "cgroup.procs")

    def enter_cgroup():  # runs in the forked child before exec: moves only that process
        with open(procs, "w") as f:
            f.write(str(os.getpid()))

    env = dict(os.environ, GPCRUN_HOME=str(tmp_path / "home"))
    try:
        try:
            proc = subprocess.run([sys.executable, "-m", "gpcrun", "profile", "--json"], env=env, capture_output=True,
                                  text=True, timeout=120, preexec_fn=enter_cgroup)
        except subprocess.SubprocessError as e:
            pytest.skip(f"could not start a process inside {child}: {e}")
    finally:
        for _ in range(50):  # the exited child's charges may take a moment to drain
            try:
                os.rmdir(child)
                break
            except OSError:
                time.sleep(0.1)
    assert not os.path.exists(child)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    c = doc["host_memory"]["cgroup"]
    assert c["version"] == version
    assert c["path"].endswith(f"/gpcrun-test-{os.getpid()}")
    assert c["max_bytes"] == limit and c["limit_cgroup"] == c["path"]
    assert 0 < c["current_bytes"] < limit
    assert doc["host_memory"]["effective_limit_bytes"] == limit
    # headroom = max - (current - inactive_file): reclaimable page cache charged to the cgroup counts as room,
    # so it may exceed limit - current (by the few KiB of page cache this process read)
    assert 0 < doc["host_memory"]["effective_available_bytes"] <= c["headroom_bytes"] <= limit
    assert doc["bandwidth"]["cpu_memory"]["buffer_bytes"] * 8 <= limit  # the benchmark sized itself to the limit
