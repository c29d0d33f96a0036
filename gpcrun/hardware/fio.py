"""Disk read bandwidth with fio (the only module running fio): sequential 256k QD64 and random 4k QD1 reads.

Direct I/O only (--direct=1 --ioengine=libaio): a page-cache number would say nothing about loading a model
cold. So it refuses, with the reason, on filesystems where that cannot be measured (overlay, 9p/drvfs,
tmpfs...) or where O_DIRECT is not accepted, instead of reporting a number. The test file is always removed.
"""
from __future__ import annotations

import errno
import json
import mmap
import os
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone

from .host import mount_for, read_mounts

METHOD = "measured:fio"
# fstype -> why a direct-I/O number there would not describe the disk under it
REFUSED_FSTYPES = {
    "overlay": "overlayfs (container layer): measure the bind-mounted host path instead",
    "aufs": "aufs (container layer)",
    "9p": "9p (WSL drvfs / VM shared folder): no direct I/O to a local disk",
    "drvfs": "WSL drvfs (Windows drive)",
    "tmpfs": "tmpfs (RAM)",
    "ramfs": "ramfs (RAM)",
    "devtmpfs": "devtmpfs (RAM)",
    "squashfs": "squashfs (compressed image)",
}


@dataclass(frozen=True)
class DiskBandwidth:
    path: str  # the directory measured (realpath)
    fstype: str | None
    mount_point: str | None
    device: str | None  # the mount's source
    skipped_reason: str | None  # set instead of the numbers when refused or failed
    seq_read_bytes_per_s: int | None = None
    seq_read_iops: float | None = None
    rand4k_read_bytes_per_s: int | None = None
    rand4k_read_iops: float | None = None
    rand4k_read_lat_mean_us: float | None = None
    method: str = METHOD
    params: dict | None = None  # file size, runtime, block sizes, queue depths, engine
    fio_version: str | None = None
    measured_at: str | None = None

    _FIELDS = ("path", "fstype", "mount_point", "device", "skipped_reason", "seq_read_bytes_per_s", "seq_read_iops",
               "rand4k_read_bytes_per_s", "rand4k_read_iops", "rand4k_read_lat_mean_us", "method", "params",
               "fio_version", "measured_at")

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self._FIELDS}

    @classmethod
    def from_json(cls, d: dict) -> "DiskBandwidth":
        return cls(**{k: d.get(k) for k in cls._FIELDS if k in d})


def direct_io_problem(directory: str) -> str | None:
    """None when a file in ``directory`` accepts an O_DIRECT aligned write and read, else why not."""
    flag = getattr(os, "O_DIRECT", None)
    if flag is None:
        return "this OS has no O_DIRECT"
    probe = os.path.join(directory, f".gpcrun-odirect-{os.getpid()}")
    fd = -1
    try:
        fd = os.open(probe, os.O_CREAT | os.O_RDWR | os.O_EXCL | flag, 0o600)
        buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT wants
        buf.write(b"g" * 4096)
        os.write(fd, buf)
        os.lseek(fd, 0, os.SEEK_SET)
        os.readv(fd, [buf])
        return None
    except OSError as e:
        if e.errno == errno.EINVAL:
            return f"O_DIRECT not supported here ({e.strerror})"
        return f"O_DIRECT probe failed: {e.strerror or e}"
    finally:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(probe)
        except OSError:
            pass


def _fio_version(fio: str) -> str | None:
    try:
        return subprocess.run([fio, "--version"], capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def measure_disk(path: str, root: str = "/", size_bytes: int = 128 << 20, runtime_s: float = 2.0,
                 fio_bin: str | None = None) -> DiskBandwidth:
    """Measure the filesystem holding ``path`` (a directory, or a file's directory). Never raises for refusals."""
    d = os.path.realpath(path)
    if not os.path.isdir(d):
        d = os.path.dirname(d)
    m = mount_for(d, read_mounts(root))
    base = {"path": d, "fstype": m.fstype if m else None, "mount_point": m.mount_point if m else None,
            "device": m.source if m else None}
    if m is None:
        return DiskBandwidth(**base, skipped_reason="no mount table entry for this path (/proc/self/mountinfo)")
    why = REFUSED_FSTYPES.get(m.fstype) or (REFUSED_FSTYPES["drvfs"] if m.source == "drvfs" else None)
    if why:
        return DiskBandwidth(**base, skipped_reason=f"refused: {d} is on {m.fstype} — {why}")
    fio = fio_bin or shutil.which("fio")
    if not fio:
        return DiskBandwidth(**base, skipped_reason="fio not found on PATH (apt-get install fio)")
    if not os.access(d, os.W_OK):
        return DiskBandwidth(**base, skipped_reason=f"{d} is not writable (fio needs a test file there)")
    st = os.statvfs(d)
    if st.f_bavail * st.f_frsize < size_bytes + (256 << 20):
        return DiskBandwidth(**base, skipped_reason=f"less than {size_bytes + (256 << 20)} bytes free in {d}")
    odirect = direct_io_problem(d)
    if odirect:
        return DiskBandwidth(**base, skipped_reason=f"refused: {odirect}; a buffered number would measure"
                                                    " the page cache")
    test_file = os.path.join(d, f".gpcrun-fio-{os.getpid()}.tmp")
    runtime = max(1, int(round(runtime_s)))
    params = {"size_bytes": size_bytes, "runtime_s": runtime, "ioengine": "libaio", "direct": 1,
              "seq": {"rw": "read", "bs": "256k", "iodepth": 64}, "rand": {"rw": "randread", "bs": "4k", "iodepth": 1}}
    cmd = [fio, "--output-format=json", f"--filename={test_file}", f"--size={size_bytes}", "--direct=1",
           "--ioengine=libaio", f"--runtime={runtime}", "--time_based", "--invalidate=1", "--group_reporting=0",
           "--name=seq", "--rw=read", "--bs=256k", "--iodepth=64",
           "--name=rand", "--stonewall", "--rw=randread", "--bs=4k", "--iodepth=1"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=2 * runtime + 120)
    except subprocess.TimeoutExpired:
        return DiskBandwidth(**base, skipped_reason="fio timed out", params=params)
    finally:
        try:
            os.unlink(test_file)
        except OSError:
            pass
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return DiskBandwidth(**base, skipped_reason=f"fio exited {proc.returncode}: {tail[0]}", params=params)
    try:
        doc = json.loads(proc.stdout[proc.stdout.index("{"):])
        jobs = {j["jobname"]: j["read"] for j in doc["jobs"]}
        seq, rnd = jobs["seq"], jobs["rand"]
        lat = rnd.get("clat_ns") or rnd.get("lat_ns") or {}
    except (ValueError, KeyError, TypeError) as e:
        return DiskBandwidth(**base, skipped_reason=f"could not read fio's JSON: {e}", params=params)
    return DiskBandwidth(**base, skipped_reason=None, seq_read_bytes_per_s=int(seq["bw_bytes"]),
                         seq_read_iops=round(float(seq["iops"]), 1), rand4k_read_bytes_per_s=int(rnd["bw_bytes"]),
                         rand4k_read_iops=round(float(rnd["iops"]), 1),
                         rand4k_read_lat_mean_us=round(lat["mean"] / 1000, 2) if "mean" in lat else None,
                         params=params, fio_version=doc.get("fio version") or _fio_version(fio),
                         measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
