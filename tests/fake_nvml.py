"""A fake pynvml backend for gpcrun.hardware.nvml: same names, error classes and return shapes as nvidia-ml-py.

FakeNvml(gpus=[FakeGpu(...)], ...) models: v1-only drivers (no nvmlDeviceGetMemoryInfo_v2), functions absent
from an older nvidia-ml-py (AttributeError) or from an older driver (NVMLError_FunctionNotFound), per-device
NotSupported, unified memory (total 0 or NotSupported), several GPUs, and nvmlInit failures.
FakeCudart stands in for libcudart (gpcrun.hardware.cudart) the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_TEMPERATURE_GPU = 0
nvmlMemory_v2 = 0x02000028
ULLONG_MAX = (1 << 64) - 1

_MESSAGES = {1: "Uninitialized", 3: "Not Supported", 9: "Driver Not Loaded", 12: "NVML Shared Library Not Found",
             13: "Function Not Found", 15: "GPU is lost"}


class NVMLError(Exception):
    """Like pynvml: NVMLError(code) builds the matching subclass; .value is the code."""
    _by_code: dict[int, type] = {}

    def __new__(cls, value: int = 999):
        if cls is NVMLError:
            cls = NVMLError._by_code.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __init__(self, value: int = 999) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _MESSAGES.get(self.value, f"NVML Error with code {self.value}")


def _sub(name: str, code: int) -> type:
    cls = type(name, (NVMLError,), {"__new__": lambda c, *a: NVMLError.__new__(c, code),
                                    "__init__": lambda s, *a: NVMLError.__init__(s, code)})
    NVMLError._by_code[code] = cls
    return cls


NVMLError_Uninitialized = _sub("NVMLError_Uninitialized", 1)
NVMLError_NotSupported = _sub("NVMLError_NotSupported", 3)
NVMLError_DriverNotLoaded = _sub("NVMLError_DriverNotLoaded", 9)
NVMLError_LibraryNotFound = _sub("NVMLError_LibraryNotFound", 12)
NVMLError_FunctionNotFound = _sub("NVMLError_FunctionNotFound", 13)
NVMLError_GpuIsLost = _sub("NVMLError_GpuIsLost", 15)


@dataclass
class FakeGpu:
    uuid: str = "GPU-11111111-2222-3333-4444-555555555555"
    name: str = "NVIDIA GeForce RTX 4090"
    bus_id: bytes = b"00000000:01:00.0"
    total_bytes: int = 24 << 30
    reserved_bytes: int = 300 << 20
    used_bytes: int = 1 << 30  # v2 "used" (reserved excluded)
    cc: tuple[int, int] = (8, 9)
    pcie: tuple[int, int, int, int] = (4, 16, 4, 16)  # gen cur, width cur, gen max, width max
    power_mw: int = 35_000
    power_limit_mw: int = 450_000
    temperature_c: int = 41
    processes: list[tuple[int, int | None]] = field(default_factory=list)  # (pid, used bytes or ULLONG_MAX)
    not_supported: set[str] = field(default_factory=set)  # function names answering NotSupported
    lost: bool = False  # nvmlDeviceGetHandleByIndex fails


class FakeNvml:
    """Pass as ``backend=``. ``absent``: names missing from the module; ``driver_missing``: names the driver
    lacks (FunctionNotFound); ``v1_only``: shorthand for a driver without nvmlDeviceGetMemoryInfo_v2."""

    def __init__(self, gpus: list[FakeGpu] | None = None, *, init_error: int | None = None,
                 absent: set[str] | None = None, driver_missing: set[str] | None = None, v1_only: bool = False,
                 driver_version: str = "550.54.15", cuda_version: int = 12040) -> None:
        self.gpus = [FakeGpu()] if gpus is None else gpus
        self.init_error = init_error
        self.absent = set(absent or ())
        self.driver_missing = set(driver_missing or ())
        if v1_only:
            self.driver_missing.add("nvmlDeviceGetMemoryInfo_v2")
            self.driver_missing.add("nvmlDeviceGetComputeRunningProcesses_v3")
            self.driver_missing.add("nvmlDeviceGetComputeRunningProcesses_v2")
            self.driver_missing.add("nvmlDeviceGetTemperatureV")
            self.driver_missing.add("nvmlSystemGetCudaDriverVersion_v2")
        self.driver_version = driver_version
        self.cuda_version = cuda_version
        self.initialised = 0
        self.calls: list[str] = []
        self._fns = {n[len("_f_"):]: getattr(self, n) for n in dir(self) if n.startswith("_f_")}
        # module-level names a caller may reach through the backend object
        self.NVMLError = NVMLError
        self.NVML_TEMPERATURE_GPU = NVML_TEMPERATURE_GPU
        if "nvmlMemory_v2" not in self.absent:
            self.nvmlMemory_v2 = nvmlMemory_v2

    def __getattr__(self, name: str):
        fns = self.__dict__.get("_fns", {})
        if name in fns and name not in self.absent:
            return fns[name]
        raise AttributeError(f"module 'pynvml' has no attribute {name!r}")

    # ---- helpers
    def _enter(self, c_name: str, gpu: FakeGpu | None = None) -> None:
        self.calls.append(c_name)
        if c_name in self.driver_missing:
            raise NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)
        if not self.initialised and c_name not in ("nvmlInit",):
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        if gpu is not None and c_name in gpu.not_supported:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)

    # ---- the API (pynvml names; the C symbol each reaches is what driver_missing/not_supported match)
    def _f_nvmlInit(self):
        self._enter("nvmlInit")
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.initialised += 1

    def _f_nvmlShutdown(self):
        self._enter("nvmlShutdown")
        self.initialised -= 1

    def _f_nvmlSystemGetDriverVersion(self):
        self._enter("nvmlSystemGetDriverVersion")
        return self.driver_version

    def _f_nvmlSystemGetCudaDriverVersion(self):
        self._enter("nvmlSystemGetCudaDriverVersion")
        return self.cuda_version

    def _f_nvmlSystemGetCudaDriverVersion_v2(self):
        self._enter("nvmlSystemGetCudaDriverVersion_v2")
        return self.cuda_version

    def _f_nvmlDeviceGetCount(self):
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def _f_nvmlDeviceGetHandleByIndex(self, i):
        self._enter("nvmlDeviceGetHandleByIndex")
        if i >= len(self.gpus):
            raise NVMLError(2)
        if self.gpus[i].lost:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        return self.gpus[i]

    def _f_nvmlDeviceGetUUID(self, h):
        self._enter("nvmlDeviceGetUUID", h)
        return h.uuid

    def _f_nvmlDeviceGetName(self, h):
        self._enter("nvmlDeviceGetName", h)
        return h.name

    def _f_nvmlDeviceGetPciInfo_v3(self, h):
        self._enter("nvmlDeviceGetPciInfo_v3", h)
        return SimpleNamespace(busId=h.bus_id, busIdLegacy=h.bus_id[4:])

    def _f_nvmlDeviceGetPciInfo(self, h):
        return self._f_nvmlDeviceGetPciInfo_v3(h)

    def _f_nvmlDeviceGetMemoryInfo(self, h, version=None):
        if version:
            self._enter("nvmlDeviceGetMemoryInfo_v2", h)
            if version != nvmlMemory_v2:
                raise NVMLError(25)
            return SimpleNamespace(version=version, total=h.total_bytes, reserved=h.reserved_bytes,
                                   free=max(h.total_bytes - h.reserved_bytes - h.used_bytes, 0), used=h.used_bytes)
        self._enter("nvmlDeviceGetMemoryInfo", h)
        used = h.used_bytes + h.reserved_bytes if h.total_bytes else 0
        return SimpleNamespace(total=h.total_bytes, free=max(h.total_bytes - used, 0), used=used)

    def _f_nvmlDeviceGetCudaComputeCapability(self, h):
        self._enter("nvmlDeviceGetCudaComputeCapability", h)
        return h.cc

    def _f_nvmlDeviceGetCurrPcieLinkGeneration(self, h):
        self._enter("nvmlDeviceGetCurrPcieLinkGeneration", h)
        return h.pcie[0]

    def _f_nvmlDeviceGetCurrPcieLinkWidth(self, h):
        self._enter("nvmlDeviceGetCurrPcieLinkWidth", h)
        return h.pcie[1]

    def _f_nvmlDeviceGetMaxPcieLinkGeneration(self, h):
        self._enter("nvmlDeviceGetMaxPcieLinkGeneration", h)
        return h.pcie[2]

    def _f_nvmlDeviceGetMaxPcieLinkWidth(self, h):
        self._enter("nvmlDeviceGetMaxPcieLinkWidth", h)
        return h.pcie[3]

    def _f_nvmlDeviceGetPowerUsage(self, h):
        self._enter("nvmlDeviceGetPowerUsage", h)
        return h.power_mw

    def _f_nvmlDeviceGetEnforcedPowerLimit(self, h):
        self._enter("nvmlDeviceGetEnforcedPowerLimit", h)
        return h.power_limit_mw

    def _f_nvmlDeviceGetTemperatureV(self, h, sensor):
        self._enter("nvmlDeviceGetTemperatureV", h)
        return h.temperature_c

    def _f_nvmlDeviceGetTemperature(self, h, sensor):
        self._enter("nvmlDeviceGetTemperature", h)
        return h.temperature_c

    def _procs(self, c_name, h):
        self._enter(c_name, h)
        # pynvml itself turns ULLONG_MAX into None for some versions; the fake hands back the raw value
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in h.processes]

    def _f_nvmlDeviceGetComputeRunningProcesses_v3(self, h):
        return self._procs("nvmlDeviceGetComputeRunningProcesses_v3", h)

    def _f_nvmlDeviceGetComputeRunningProcesses_v2(self, h):
        return self._procs("nvmlDeviceGetComputeRunningProcesses_v2", h)

    def _f_nvmlDeviceGetComputeRunningProcesses(self, h):
        return self._procs("nvmlDeviceGetComputeRunningProcesses", h)


class FakeCudart:
    """ctypes-call-compatible stand-in for libcudart: writes through byref() like the C library would."""

    def __init__(self, count=1, fail=None, rc_count=0):
        self.count, self.fail, self.rc_count = count, fail or {}, rc_count
        self.freed: list[str] = []
        self.copies = 0

        def rc(name):
            return self.fail.get(name, 0)

        def get_count(p):
            p._obj.value = self.count
            return self.rc_count

        def malloc(p, size):
            if rc("cudaMalloc"):
                return rc("cudaMalloc")
            p._obj.value = 0x7000_0000
            return 0

        def malloc_host(p, size):
            if rc("cudaMallocHost"):
                return rc("cudaMallocHost")
            p._obj.value = 0x1000_0000
            return 0

        def bus_id(buf, n, dev):
            buf.value = f"0000:{dev.value + 1:02X}:00.0".encode()
            return 0

        def memcpy(dst, src, size, kind):
            self.copies += 1
            return rc("cudaMemcpy")

        def error_string(code):
            return {2: b"out of memory", 35: b"CUDA driver version is insufficient for CUDA runtime version"}.get(
                code, b"unknown error")

        self.cudaGetDeviceCount = get_count
        self.cudaSetDevice = lambda d: rc("cudaSetDevice")
        self.cudaDeviceGetPCIBusId = bus_id
        self.cudaMallocHost = malloc_host
        self.cudaMalloc = malloc
        self.cudaMemcpy = memcpy
        self.cudaDeviceSynchronize = lambda: 0
        self.cudaDeviceReset = lambda: self.freed.append("context") or 0
        self.cudaFree = lambda p: self.freed.append("device") or 0
        self.cudaFreeHost = lambda p: self.freed.append("host") or 0
        self.cudaGetErrorString = error_string
