"""classify(): why a server run ended, from exit status, log text, the cgroup OOM-kill counter and the watchdog."""
from __future__ import annotations

import signal

import pytest

from gpcrun.exits import Exit
from gpcrun.launch.outcome import classify, log_cause

EXIT_CLEAN, EXIT_CRASHED, EXIT_LOAD_FAILED = Exit.OK.code, Exit.CRASHED.code, Exit.LOAD_FAILED.code
EXIT_TIMEOUT, EXIT_WATCHDOG = Exit.TIMEOUT.code, Exit.WATCHDOG.code

KILL, ILL, SEGV, TERM = -signal.SIGKILL, -signal.SIGILL, -signal.SIGSEGV, -signal.SIGTERM

CUDA_OOM = ("ggml_backend_cuda_buffer_type_alloc_buffer: allocating 9216.00 MiB on device 0: cudaMalloc failed: "
            "out of memory\nalloc_tensor_range: failed to allocate CUDA0 buffer of size 9663676416\n")
METAL_OOM = ("ggml_metal_graph_compute: command buffer 0 failed with status 5\n"
             "error: kIOGPUCommandBufferCallbackErrorOutOfMemory\n")
HOST_OOM = ("llama_kv_cache: failed to allocate buffer for kv cache\n"
            "llama_init_from_model: failed to initialize the context\n")
BAD_FLAG = "error: invalid argument: --no-such-flag\n"
BAD_MODEL = ("gguf_init_from_file_impl: failed to read magic\nllama_model_load: error loading model: "
             "llama_model_loader: failed to load model from /m.gguf\n"
             "srv    load_model: failed to load model, '/m.gguf'\n")
MISSING_MODEL = "gguf_init_from_file: failed to open GGUF file '/nope.gguf'\n"
PORT = "start: couldn't bind HTTP server socket, hostname: 127.0.0.1, port: 8080\nexiting due to HTTP server error\n"
NOISE = "load_tensors: CPU_Mapped model buffer size = 73.18 MiB\nmain: server is listening on http://127.0.0.1:8080\n"


# (name, kwargs for classify, kind, exit code, cause, words the reason must contain)
CASES = [
    ("oom_kill counter rose + SIGKILL while loading", dict(returncode=KILL, phase="loading", oom_kills_before=2,
     oom_kills_after=3), "load_failed", EXIT_LOAD_FAILED, "oom_kill", ["OOM killer", "2 -> 3"]),
    ("oom_kill counter rose + exit 137 after ready", dict(returncode=137, phase="ready", oom_kills_before=0,
     oom_kills_after=1), "crashed", EXIT_CRASHED, "oom_kill", ["OOM killer", "after it was ready"]),
    ("SIGKILL, counter unchanged: not an OOM kill", dict(returncode=KILL, phase="ready", oom_kills_before=4,
     oom_kills_after=4), "crashed", EXIT_CRASHED, "signal", ["SIGKILL"]),
    ("SIGKILL, counter unknown", dict(returncode=KILL, phase="ready"), "crashed", EXIT_CRASHED, "signal", ["SIGKILL"]),
    ("SIGILL while loading", dict(returncode=ILL, phase="loading"), "load_failed", EXIT_LOAD_FAILED, "sigill",
     ["SIGILL", "build_llama"]),
    ("exit 132 (shell's SIGILL)", dict(returncode=132, phase="ready"), "crashed", EXIT_CRASHED, "sigill", ["SIGILL"]),
    ("CUDA malloc failure", dict(returncode=1, phase="loading", log_tail=NOISE + CUDA_OOM), "load_failed",
     EXIT_LOAD_FAILED, "gpu_oom", ["CUDA", "exit code 1"]),
    ("Metal out of memory", dict(returncode=1, phase="ready", log_tail=METAL_OOM), "crashed", EXIT_CRASHED,
     "gpu_oom", ["GPU allocation failed"]),
    ("host KV allocation failure", dict(returncode=1, phase="loading", log_tail=NOISE + HOST_OOM), "load_failed",
     EXIT_LOAD_FAILED, "host_oom", ["host memory", "kv cache"]),
    ("std::bad_alloc abort", dict(returncode=-signal.SIGABRT, phase="ready",
     log_tail="terminate called after throwing an instance of 'std::bad_alloc'\n"), "crashed", EXIT_CRASHED,
     "host_oom", ["host memory", "SIGABRT"]),
    ("bad flag", dict(returncode=1, phase="loading", log_tail=BAD_FLAG), "load_failed", EXIT_LOAD_FAILED,
     "bad_flag", ["--no-such-flag"]),
    ("invalid model", dict(returncode=1, phase="loading", log_tail=BAD_MODEL), "load_failed", EXIT_LOAD_FAILED,
     "model_invalid", ["could not be loaded"]),
    ("missing model file", dict(returncode=1, phase="loading", log_tail=MISSING_MODEL), "load_failed",
     EXIT_LOAD_FAILED, "model_invalid", ["could not be loaded", "nope.gguf"]),
    ("port in use", dict(returncode=1, phase="loading", log_tail=NOISE + PORT), "load_failed", EXIT_LOAD_FAILED,
     "port_in_use", ["port is already in use"]),
    ("clean stop by SIGTERM", dict(returncode=0, phase="ready", stopped_by_user=True), "clean_stop", EXIT_CLEAN,
     None, ["stopped on request"]),
    ("clean stop, server needed SIGKILL", dict(returncode=KILL, phase="ready", stopped_by_user=True),
     "clean_stop", EXIT_CLEAN, None, ["stopped on request"]),
    ("clean stop, server exit 1", dict(returncode=1, phase="ready", stopped_by_user=True), "clean_stop",
     EXIT_CLEAN, None, ["server exit 1"]),
    ("load timeout", dict(returncode=TERM, phase="loading", timed_out=True), "timeout", EXIT_TIMEOUT, "timeout",
     ["did not become ready"]),
    ("watchdog abort wins over everything", dict(returncode=KILL, phase="ready", oom_kills_before=0,
     oom_kills_after=1, watchdog_rule="host_term", watchdog_message="host memory available 300 MiB",
     stopped_by_user=True, timed_out=True, log_tail=HOST_OOM), "watchdog_abort", EXIT_WATCHDOG, "host_term",
     ["watchdog", "300 MiB"]),
    ("crash after ready by SIGSEGV", dict(returncode=SEGV, phase="ready", log_tail=NOISE), "crashed", EXIT_CRASHED,
     "signal", ["SIGSEGV", "after it was ready"]),
    ("exit 0 on its own after ready", dict(returncode=0, phase="ready"), "crashed", EXIT_CRASHED, "exited",
     ["on its own"]),
    ("plain exit code while loading", dict(returncode=2, phase="loading", log_tail=NOISE), "load_failed",
     EXIT_LOAD_FAILED, "exit_code", ["code 2", "while loading"]),
]


@pytest.mark.parametrize("name,kw,kind,code,cause,words", CASES, ids=[c[0] for c in CASES])
def test_classify(name, kw, kind, code, cause, words):
    o = classify(**kw)
    assert (o.kind, o.exit_code, o.cause) == (kind, code, cause), o
    for w in words:
        assert w.lower() in o.reason.lower(), (w, o.reason)
    assert "\n" not in o.reason  # one line for people
    assert o.to_json()["exit_code"] == code


def test_exit_codes_are_distinct():
    codes = [EXIT_CLEAN, EXIT_LOAD_FAILED, EXIT_CRASHED, EXIT_WATCHDOG, EXIT_TIMEOUT, 10]
    assert len(set(codes)) == len(codes)


def test_log_cause_first_rule_wins_and_reports_the_line():
    # a CUDA failure usually drags "failed to load model" after it: the allocation is the cause
    kind, human = log_cause(CUDA_OOM + BAD_MODEL)
    assert kind == "gpu_oom"
    assert log_cause(NOISE) is None
    kind, human = log_cause("x\n" + PORT)
    assert kind == "port_in_use" and "couldn't bind" in human and "\n" not in human
