"""llama.cpp's own device list: what llama-server would use for the user's flags, with each device's memory.

`llama-server [--rpc HOST:PORT,...] [--device ...] --list-devices` prints (common/arg.cpp, --list-devices):

    Available devices:
      RPC0: 127.0.0.1:50554 (24105 MiB, 24105 MiB free)

An RPC device reports the remote backend's memory: for a CPU backend, ggml-cpu's total physical memory with all of
it "free" (ggml-cpu.cpp ggml_backend_cpu_device_get_memory). llama.cpp puts RPC devices first in a model's device
list (src/llama.cpp: model->devices.insert(begin, rpc_servers)), before local GPUs.
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from typing import Mapping, Sequence

from ..errors import DeviceListError

_LINE = re.compile(r"^\s+(?P<name>[^\s:]+): (?P<desc>.*) \((?P<total>\d+) MiB, (?P<free>\d+) MiB free\)\s*$")
MIB = 1 << 20


@dataclass(frozen=True)
class LlamaDevice:
    name: str  # llama.cpp's device name: CUDA0, Vulkan0, RPC0 ...
    description: str
    total_bytes: int
    free_bytes: int

    @property
    def backend(self) -> str:
        return re.sub(r"\d+$", "", self.name)


def parse_list_devices(text: str) -> list[LlamaDevice]:
    """The devices of a `--list-devices` output, in llama.cpp's order ("(none)" and other lines: nothing)."""
    out = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            out.append(LlamaDevice(m["name"], m["desc"], int(m["total"]) * MIB, int(m["free"]) * MIB))
    return out


def list_devices(server_bin: str, args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                 timeout_s: float = 20.0) -> list[LlamaDevice]:
    """Run `server_bin ARGS --list-devices` (ARGS: the user's --rpc/--device flags) and parse it; an unreachable
    RPC server makes llama.cpp fail, which raises DeviceListError with its last line."""
    try:
        p = subprocess.run([server_bin, *args, "--list-devices"], capture_output=True, text=True,
                           timeout=timeout_s, env=dict(env) if env is not None else None)
    except subprocess.TimeoutExpired as e:
        busy = (" (a ggml-rpc-server serves one client at a time, ggml-rpc.cpp:2146-2153: is another llama-server"
                " connected to it?)" if "--rpc" in args else "")
        raise DeviceListError(f"llama.cpp did not list its devices within {timeout_s:g} s ({server_bin} "
                              f"{' '.join(args)} --list-devices){busy}") from e
    except OSError as e:
        raise DeviceListError(f"cannot list llama.cpp's devices ({server_bin} --list-devices): {e}") from e
    devices = parse_list_devices(p.stdout + "\n" + p.stderr)
    if p.returncode != 0 and not devices:
        raise DeviceListError(f"llama.cpp cannot list the devices of {' '.join(args)} (llama-server --list-devices"
                              f" exited {p.returncode}): {_why(p.stderr + p.stdout)}")
    return devices


def _why(text: str) -> str:
    """The line that says what failed (ggml prints `file:line: Failed to connect to HOST:PORT`, then a backtrace)."""
    for line in text.splitlines():
        m = re.search(r"(?:ggml|llama)[\w/.-]*\.cpp:\d+: (.*)", line)
        if m:
            return m.group(1).strip()
    lines = [x.strip() for x in text.splitlines() if re.search(r"error|fail", x, re.I)]
    return lines[0] if lines else "no reason given"
