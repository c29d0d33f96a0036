"""gpcrun.hardware.nvml against a fake pynvml (tests/fake_nvml.py), CUDA_VISIBLE_DEVICES, real NVML (-m gpu)."""
from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from fake_nvml import ULLONG_MAX, FakeGpu, FakeNvml  # noqa: E402

from gpcrun.hardware import nvml  # noqa: E402
from gpcrun.hardware.nvml import NvmlSession, read_gpus, visible_devices  # noqa: E402

UUIDS = ["GPU-aaaa1111-0000-0000-0000-000000000000", "GPU-bbbb2222-0000-0000-0000-000000000000",
         "GPU-aaab3333-0000-0000-0000-000000000000"]


def three_gpus(**kw) -> list[FakeGpu]:
    return [FakeGpu(uuid=u, bus_id=f"00000000:0{i + 1}:00.0".encode(), **kw) for i, u in enumerate(UUIDS)]


# ---------------------------------------------------------------- CUDA_VISIBLE_DEVICES

@pytest.mark.parametrize("value,expected,note_has", [
    (None, [0, 1, 2], None),
    ("", [], "not a device index"),
    ("0", [0], None),
    ("2,0", [2, 0], None),
    (" 1 , 2 ", [1, 2], None),
    ("1,5,0", [1], "'5' is not a device index"),          # out of range truncates, as CUDA does
    ("0,2,-1,1", [0, 2], "'-1'"),                          # CUDA's documented example
    ("3", [], "not a device index"),
    ("abc", [], "'abc'"),
    ("1gpu2,2ampere", [1, 2], None),                       # strtoul: leading digits count
    ("0,0", [], "repeats a device"),                       # a repeated device hides all
    ("GPU-bbbb", [1], None),                               # unique UUID prefix
    ("GPU-aaa", [], "ambiguous"),                          # two UUIDs start with it
    ("GPU-bbbb2222,GPU-zzzz,GPU-aaaa1111", [1], "matches no GPU UUID"),
    ("GPU-aaab,GPU-aaaa", [2, 0], None),
    ("GPU-bbbb,0", [1], "'0' matches no GPU UUID"),        # a list started with UUIDs stops at an index
    ("0,GPU-bbbb", [0], "'GPU-bbbb' is not a device index"),
    ("GPU-bbbb,GPU-bbbb2222", [], "repeats a device"),
    ("MIG-4f6b6b0a-1111-2222-3333-444444444444", [], "MIG"),
])
def test_cuda_visible_devices_table(value, expected, note_has):
    got, note = visible_devices(value, UUIDS)
    assert got == expected
    if note_has is None:
        assert note is None
    else:
        assert note is not None and note_has in note


def test_visible_devices_env_filters_and_renumbers():
    b = FakeNvml(three_gpus())
    inv = read_gpus(b, env={"CUDA_VISIBLE_DEVICES": "2,GPU-x"})  # "GPU-x" after an index is invalid: stops
    assert [(g.nvml_index, g.cuda_index) for g in inv.devices] == [(2, 0)]
    assert inv.cuda_visible_devices == "2,GPU-x"
    assert any("1 device(s) visible" in n for n in inv.notes)
    inv = read_gpus(b, env={"CUDA_VISIBLE_DEVICES": "GPU-bbbb"})
    assert [g.uuid for g in inv.devices] == [UUIDS[1]]


def test_visible_devices_hiding_all_gives_reason():
    inv = read_gpus(FakeNvml(three_gpus()), env={"CUDA_VISIBLE_DEVICES": ""})
    assert inv.available and inv.devices == ()
    assert "CUDA_VISIBLE_DEVICES" in inv.reason


def test_index_order_note_without_pci_bus_order():
    inv = read_gpus(FakeNvml(three_gpus()), env={"CUDA_VISIBLE_DEVICES": "1,0"})
    assert any("CUDA_DEVICE_ORDER" in n for n in inv.notes)
    inv = read_gpus(FakeNvml(three_gpus()), env={"CUDA_VISIBLE_DEVICES": "1,0", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    assert not inv.notes


# ---------------------------------------------------------------- fake backend

def test_multi_gpu_v2_driver_reads_everything():
    gpus = three_gpus(processes=[(4242, 3 << 30)])
    gpus[1].name = "NVIDIA RTX A6000"
    gpus[1].total_bytes = 48 << 30
    b = FakeNvml(gpus)
    inv = read_gpus(b, env={})
    assert inv.available and inv.reason is None
    assert inv.driver_version == "550.54.15" and inv.cuda_driver_version == "12.4"
    assert inv.sources["cuda_driver_version"] == "nvml:nvmlSystemGetCudaDriverVersion_v2"
    assert inv.nvml_device_count == 3 and len(inv.devices) == 3
    g = inv.devices[1]
    assert (g.nvml_index, g.cuda_index, g.uuid, g.name) == (1, 1, UUIDS[1], "NVIDIA RTX A6000")
    assert g.pci_bus_id == "00000000:02:00.0"
    assert g.total_bytes == 48 << 30 and g.reserved_bytes == 300 << 20 and g.unified_memory is False
    assert g.sources["total_bytes"] == "nvml:nvmlDeviceGetMemoryInfo_v2"
    assert g.compute_capability == "8.9"
    assert (g.pcie_link_gen_current, g.pcie_link_width_current, g.pcie_link_gen_max, g.pcie_link_width_max) == \
        (4, 16, 4, 16)
    assert g.power_limit_mw == 450_000 and g.sources["power_limit_mw"] == "nvml:nvmlDeviceGetEnforcedPowerLimit"
    v = g.volatile
    assert v.used_bytes == 1 << 30 and v.free_bytes == (48 << 30) - (300 << 20) - (1 << 30)
    assert v.power_draw_mw == 35_000 and v.temperature_c == 41
    assert v.sources["temperature_c"] == "nvml:nvmlDeviceGetTemperatureV"
    assert v.sources["processes"] == "nvml:nvmlDeviceGetComputeRunningProcesses_v3"
    assert [(p.pid, p.used_bytes) for p in v.processes] == [(4242, 3 << 30)]
    assert g.unknown == {} and v.unknown == {}
    assert b.initialised == 0  # nvmlShutdown ran
    json.dumps(inv.to_json())


def test_v1_only_driver_falls_back_and_says_so():
    b = FakeNvml([FakeGpu(processes=[(7, 1 << 20)])], v1_only=True, cuda_version=11080)
    inv = read_gpus(b, env={})
    g = inv.devices[0]
    assert g.sources["total_bytes"] == "nvml:nvmlDeviceGetMemoryInfo"
    assert g.reserved_bytes is None
    assert "Function Not Found" in g.unknown["reserved_bytes"] and "v1" in g.unknown["reserved_bytes"]
    assert g.volatile.used_bytes == (1 << 30) + (300 << 20)  # v1 folds reserved into used
    assert "includes reserved" in g.volatile.sources["used_bytes"]
    assert g.volatile.sources["temperature_c"] == "nvml:nvmlDeviceGetTemperature"
    assert g.volatile.sources["processes"] == "nvml:nvmlDeviceGetComputeRunningProcesses"
    assert inv.cuda_driver_version == "11.8"
    assert inv.sources["cuda_driver_version"] == "nvml:nvmlSystemGetCudaDriverVersion"


def test_functions_absent_from_old_nvidia_ml_py():
    b = FakeNvml([FakeGpu()], absent={"nvmlMemory_v2", "nvmlDeviceGetTemperatureV",
                                     "nvmlDeviceGetComputeRunningProcesses_v3",
                                     "nvmlDeviceGetComputeRunningProcesses_v2", "nvmlDeviceGetPciInfo_v3",
                                     "nvmlSystemGetCudaDriverVersion_v2", "nvmlDeviceGetMaxPcieLinkWidth"})
    g = read_gpus(b, env={}).devices[0]
    assert g.sources["total_bytes"] == "nvml:nvmlDeviceGetMemoryInfo"
    assert g.sources["pci_bus_id"] == "nvml:nvmlDeviceGetPciInfo"
    assert g.volatile.sources["temperature_c"] == "nvml:nvmlDeviceGetTemperature"
    assert g.volatile.sources["processes"] == "nvml:nvmlDeviceGetComputeRunningProcesses"
    assert g.pcie_link_width_max is None
    assert "not in this nvidia-ml-py" in g.unknown["pcie_link_width_max"]


def test_old_signature_without_version_keyword():
    b = FakeNvml([FakeGpu()])
    v1 = b._fns["nvmlDeviceGetMemoryInfo"]
    b._fns["nvmlDeviceGetMemoryInfo"] = lambda h: v1(h)  # an nvidia-ml-py that predates version=
    g = read_gpus(b, env={}).devices[0]
    assert g.sources["total_bytes"] == "nvml:nvmlDeviceGetMemoryInfo"
    assert "version" in g.unknown["reserved_bytes"]


def test_not_supported_values_are_none_with_reason():
    gpu = FakeGpu(not_supported={"nvmlDeviceGetPowerUsage", "nvmlDeviceGetEnforcedPowerLimit",
                                 "nvmlDeviceGetTemperatureV", "nvmlDeviceGetTemperature",
                                 "nvmlDeviceGetCurrPcieLinkGeneration",
                                 "nvmlDeviceGetComputeRunningProcesses_v3",
                                 "nvmlDeviceGetComputeRunningProcesses_v2",
                                 "nvmlDeviceGetComputeRunningProcesses"})
    g = read_gpus(FakeNvml([gpu]), env={}).devices[0]
    assert g.power_limit_mw is None and "Not Supported" in g.unknown["power_limit_mw"]
    assert g.pcie_link_gen_current is None and g.pcie_link_width_current == 16
    v = g.volatile
    assert v.power_draw_mw is None and "Not Supported" in v.unknown["power_draw_mw"]
    assert v.temperature_c is None
    assert "nvmlDeviceGetTemperatureV: Not Supported" in v.unknown["temperature_c"]
    assert "nvmlDeviceGetTemperature: Not Supported" in v.unknown["temperature_c"]
    assert v.processes is None and "v3" in v.unknown["processes"]
    assert g.total_bytes == 24 << 30  # the rest still read


def test_driver_missing_function_not_found():
    b = FakeNvml([FakeGpu()], driver_missing={"nvmlDeviceGetCudaComputeCapability"})
    g = read_gpus(b, env={}).devices[0]
    assert g.compute_capability is None and "Function Not Found" in g.unknown["compute_capability"]


def test_unified_memory_total_zero():
    g = read_gpus(FakeNvml([FakeGpu(name="NVIDIA GB10", total_bytes=0)]), env={}).devices[0]
    assert g.unified_memory is True and g.total_bytes is None and g.reserved_bytes is None
    assert "total 0" in g.unknown["total_bytes"]
    assert g.volatile.free_bytes is None and "unified memory" in g.volatile.unknown["free_bytes"]


def test_unified_memory_not_supported():
    gpu = FakeGpu(name="NVIDIA Jetson", not_supported={"nvmlDeviceGetMemoryInfo_v2", "nvmlDeviceGetMemoryInfo"})
    g = read_gpus(FakeNvml([gpu]), env={}).devices[0]
    assert g.unified_memory is True and g.total_bytes is None
    assert "NotSupported" in g.sources["unified_memory"]
    assert g.volatile.free_bytes is None


def test_process_memory_unavailable_is_none():
    gpu = FakeGpu(processes=[(1, ULLONG_MAX), (2, None), (3, 512 << 20)])
    v = read_gpus(FakeNvml([gpu]), env={}).devices[0].volatile
    assert [(p.pid, p.used_bytes) for p in v.processes] == [(1, None), (2, None), (3, 512 << 20)]


@pytest.mark.parametrize("code,words", [(12, "no NVIDIA driver library"), (9, "kernel driver is not loaded"),
                                        (999, "NVML init failed")])
def test_init_failure_is_an_empty_inventory(code, words):
    inv = read_gpus(FakeNvml(init_error=code), env={})
    assert inv.available is False and inv.devices == () and words in inv.reason
    assert inv.driver_version is None and inv.unknown["driver_version"] == inv.reason
    json.dumps(inv.to_json())


def test_no_gpus():
    inv = read_gpus(FakeNvml([]), env={})
    assert inv.available and inv.devices == () and inv.reason == "NVML reports no GPU"


def test_lost_gpu_is_skipped_with_a_note():
    gpus = three_gpus()
    gpus[1].lost = True
    inv = read_gpus(FakeNvml(gpus), env={})
    assert [g.nvml_index for g in inv.devices] == [0, 2]
    assert any("GPU is lost" in n for n in inv.notes)


def test_pynvml_not_installed(monkeypatch, tmp_path):
    monkeypatch.setattr(nvml, "DRIVER_NODES", (str(tmp_path),))  # a driver node exists: pynvml is imported
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    inv = read_gpus(None, env={})
    assert inv.available is False and "nvidia-ml-py" in inv.reason


def test_no_driver_node_opens_nothing(monkeypatch, tmp_path):
    monkeypatch.setattr(nvml, "DRIVER_NODES", (str(tmp_path / "nvidiactl"), str(tmp_path / "dxg")))
    monkeypatch.setitem(sys.modules, "pynvml", None)  # would fail the import: it must not be tried
    inv = read_gpus(None, env={})
    assert inv.available is False and inv.devices == ()
    assert "no NVIDIA driver" in inv.reason and "nvidiactl" in inv.reason


def test_session_sample_rereads_volatile_values():
    gpus = three_gpus()
    b = FakeNvml(gpus)
    with NvmlSession(b, env={"CUDA_VISIBLE_DEVICES": "2,1"}) as s:
        inv = s.inventory()
        first = s.sample()
        gpus[2].used_bytes = 10 << 30
        gpus[2].power_mw = 300_000
        gpus[2].processes = [(99, 9 << 30)]
        second = s.sample()
        n_calls = len(b.calls)
        s.sample()
        per_sample = len(b.calls) - n_calls
    assert [g.nvml_index for g in inv.devices] == [2, 1]
    assert len(first) == len(second) == 2
    assert first[0].used_bytes == 1 << 30 and second[0].used_bytes == 10 << 30
    assert second[0].power_draw_mw == 300_000 and second[0].processes[0].pid == 99
    assert second[1].used_bytes == 1 << 30
    assert per_sample == 2 * 4  # memory, temperature, power, processes: nothing static re-read
    assert b.initialised == 0
    assert NvmlSession(b).sample() == ()  # not opened: nothing, no error


def test_read_volatile_on_open_handle():
    b = FakeNvml([FakeGpu()])
    b.nvmlInit()
    v = nvml.read_volatile(b, b.nvmlDeviceGetHandleByIndex(0))
    assert v.free_bytes > 0 and v.read_at_unix_s > 0


def test_real_pynvml_never_raises():
    inv = read_gpus()  # the real library: here usually absent; on a GPU host it lists devices
    json.dumps(inv.to_json())
    if not inv.devices:
        assert inv.reason


# ---------------------------------------------------------------- real GPU

@pytest.mark.gpu
def test_real_nvml_fields_are_sane():
    inv = read_gpus()
    assert inv.available, inv.reason
    assert inv.devices, inv.reason
    assert inv.driver_version and inv.cuda_driver_version
    for g in inv.devices:
        assert g.uuid and g.uuid.startswith(("GPU-", "MIG-")), g.uuid
        assert g.name
        assert g.pci_bus_id
        assert g.compute_capability and g.compute_capability[0].isdigit()
        if g.unified_memory:
            continue
        v = g.volatile
        assert g.total_bytes > v.free_bytes > 0, (g.total_bytes, v.free_bytes)
        assert v.used_bytes is not None and 0 <= v.used_bytes <= g.total_bytes
        assert g.sources["total_bytes"].startswith("nvml:nvmlDeviceGetMemoryInfo")
        assert g.power_limit_mw is not None and g.power_limit_mw > 0
        assert v.power_draw_mw is None or v.power_draw_mw >= 0
        assert v.temperature_c is not None and 0 < v.temperature_c < 120
        for gen in (g.pcie_link_gen_current, g.pcie_link_gen_max):
            assert gen is not None and 1 <= gen <= 6
        for width in (g.pcie_link_width_current, g.pcie_link_width_max):
            assert width is not None and 1 <= width <= 32
        assert v.processes is not None
        for p in v.processes:
            assert p.pid > 0 and (p.used_bytes is None or 0 <= p.used_bytes <= g.total_bytes)
