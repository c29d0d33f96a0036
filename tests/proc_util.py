"""Helpers shared by the tests that start real processes: liveness, polling with deadlines, a limited cgroup."""
from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

from gpcrun.hardware import host


def gone(pid: int) -> bool:
    """Dead, or a zombie: pid 1 here does not reap orphans, so a killed orphan stays a zombie."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(cond, timeout_s: float, step_s: float = 0.01):
    """Poll cond() until it is truthy or the deadline passes; returns its last value (no sleeps as sync)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(step_s)
    return cond()


def assert_none_survive(pids, grace_s: float = 2.0) -> None:
    """Every process a test started must be gone (or a zombie) within grace_s."""
    leftovers = [pid for pid in pids if not wait_until(lambda p=pid: gone(p), grace_s)]
    assert not leftovers, f"processes survived the test: {leftovers}"


def limited_child_cgroup(limit_bytes: int, name: str) -> tuple[str, int]:
    """A child of this process's memory cgroup with a limit: (path, cgroup version). Skips, saying why, where
    that cannot be done (not root, no memory controller, cgroup2 without it delegated to children)."""
    made = make_child_cgroup(limit_bytes, name)
    if isinstance(made, str):
        pytest.skip(made)
    return made


def make_child_cgroup(limit_bytes: int, name: str) -> tuple[str, int] | str:
    """limited_child_cgroup without pytest (scripts/bench/faults_env.py uses it too): the child, or why not."""
    if os.geteuid() != 0:
        return "needs root to create a memory cgroup"
    loc = host.locate_cgroup("memory")
    if loc is None:
        return "no memory cgroup controller mounted (v1 or v2)"
    parent = loc.dirs[0]
    if loc.version == 2:
        ctl = Path(parent, "cgroup.subtree_control")
        if "memory" not in (ctl.read_text().split() if ctl.exists() else []):
            return (f"cgroup2: the memory controller is not enabled for children of {loc.path}"
                    " (cgroup.subtree_control); enabling it would change this process's own cgroup")
    child = os.path.join(parent, f"{name}-{os.getpid()}")
    try:
        os.mkdir(child)
    except OSError as e:
        return f"cannot create a child cgroup under {parent}: {e}"
    try:
        with open(os.path.join(child, "memory.max" if loc.version == 2 else "memory.limit_in_bytes"), "w") as f:
            f.write(str(limit_bytes))
    except OSError as e:
        os.rmdir(child)
        return f"cannot set a memory limit on {child}: {e}"
    return child, loc.version


def in_cgroup(child: str) -> tuple[str, ...]:
    """A command prefix that runs the command inside `child`."""
    return ("sh", "-c", f'echo $$ > {child}/cgroup.procs && exec "$@"', "sh")


def remove_cgroup(child: str) -> None:
    """SIGKILL whatever is left in `child`, then remove it."""
    import signal
    procs = Path(child, "cgroup.procs")
    for _ in range(50):
        pids = [int(x) for x in procs.read_text().split()] if procs.exists() else []
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    try:
        os.rmdir(child)
    except OSError:
        pass


def serve_until_ready(args: list[str], env: dict, deadline_s: float = 120):
    """`gpcrun serve --quiet ARGS` until it says 'ready at URL': (the process, the URL). On death or deadline the
    process group is killed and the test fails with what gpcrun printed."""
    import signal
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "gpcrun", "serve", "--quiet", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines = []
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if "ready at" in line:
            return proc, line.split("ready at ", 1)[1].split(" in ", 1)[0]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    raise AssertionError("gpcrun serve did not become ready:\n" + "".join(lines))


def stop_serve(proc) -> str:
    """SIGTERM to gpcrun serve; it must end cleanly (exit 0). Returns the rest of its stderr."""
    import signal
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0, err
    return err
