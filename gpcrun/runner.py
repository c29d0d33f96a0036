"""One measured run as a library call: plan -> supervised, watched llama-server -> bench -> receipt.

Used by `gpcrun batch` for every job; a refused, failed, aborted or timed-out run still returns a receipt.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .exits import Exit


@dataclass
class RunSpec:
    model: str  # local path
    ctx: int | None = None
    kv_type: str | None = None
    parallel: int = 1
    server_args: Sequence[str] = ()
    concurrency: Sequence[int] = ()
    prompt_tokens: int = 512
    gen_tokens: int = 128
    repetitions: int = 3
    timeout_s: float | None = None  # whole run: load + bench
    floor_tok_s: float = 1.0
    server_bin: str | None = None
    force: bool = False
    redact_paths: bool = False
    extra: dict = field(default_factory=dict)


def measured_run(spec: RunSpec, store, runs_root: Path | None = None,
                 echo: Callable[[str], None] = lambda m: None) -> tuple[dict, Path]:
    """Returns (receipt document, receipt path). Never raises for a server or bench failure."""
    from .bench import BenchClient, BenchConfig, run_bench
    from .cli import main as _cli  # noqa: F401 - first: cli.plan_cmd imported on its own is a circular import
    from .cli.plan_cmd import build_request, build_target, load_calibration
    from .hardware.profile import get_profile
    from .launch.binary import find_tool
    from .launch.run import RunOptions, ServerRun, free_port, new_run_dir, server_argv, url_of, \
        write_json_atomic
    from .model import header_sha256, load_model
    from .plan import make_plan
    from .receipt import build_receipt, compare_with_forecast

    profile = get_profile().to_json()
    hub_info = None
    if _is_ref(spec.model):  # plan from the header alone: a model that can't run is never downloaded
        from .hub import load_ref_header
        info, hub_info = load_ref_header(spec.model)
    else:
        info = load_model(spec.model)
    binary = find_tool("llama-server", spec.server_bin)
    slots = max(spec.parallel, max(spec.concurrency or (1,)))
    req = build_request(spec.ctx, spec.kv_type, slots, spec.floor_tok_s, None, list(spec.server_args))
    target = build_target((), (), False)
    plan = make_plan(info, target, req, load_calibration(info, target, req.pinned))
    plan_doc = plan.to_json()
    run_dir = new_run_dir(runs_root)
    write_json_atomic(run_dir / "plan.json", plan_doc)
    name = os.path.basename((hub_info or {}).get("files", [info.path])[0]) if hub_info else os.path.basename(info.path)
    model_doc = {"file_name": name, "path": spec.model if hub_info else info.path,
                 "size_bytes": info.file_size_bytes, "header_sha256": header_sha256(info),
                 "architecture": info.architecture, "quant_mix_bytes": info.quant_mix(),
                 "tensor_bytes": info.tensor_bytes, "hub": hub_info}

    def receipt(argv, measured, envelope, outcome):
        doc = build_receipt(kind="bench", hardware=profile, model=model_doc, plan=plan_doc, argv=argv,
                            env=os.environ, llama_cpp={"build_info": ((measured or {}).get("server") or {})
                                                       .get("build_info")},
                            measured=measured, envelope=envelope, outcome=outcome, run_dir=str(run_dir),
                            redact_path_names=spec.redact_paths)
        return doc, store.save(doc)

    if plan.verdict != "ship" and not spec.force:
        return receipt(list(plan.argv), None, None, {"kind": "refused", "exit_code": Exit.REFUSED.code, "cause": "plan",
                                                     "reason": "; ".join(plan.reasons)})
    args = list(plan.argv) if plan.argv else ["-m", spec.model, *spec.server_args]
    if hub_info is not None:  # the plan ships: now fetch the weights into the HF cache
        from .hub import download_model
        args[args.index("-m") + 1] = download_model(spec.model)
    if "--metrics" not in args:
        args.append("--metrics")
    has_port = any(a == "--port" or a.startswith("--port=") for a in args)
    t_start = time.monotonic()
    current: dict = {}
    try:
        for port_try in (1, 2):
            argv = server_argv(str(binary), args, port=None if has_port else free_port())
            run = ServerRun(RunOptions(argv=argv, run_dir=run_dir, model_bytes=info.file_size_bytes, quiet=True,
                                       echo=echo, ready_timeout_s=spec.timeout_s))
            box: dict = {}
            th = threading.Thread(target=lambda run=run, box=box: box.update(r=run.run_until_stopped()),
                                  name="gpcrun-run", daemon=True)
            th.start()
            current.update(run=run, th=th)
            while not run.ready_event.wait(0.1):
                if not th.is_alive():
                    break
            if run.ready_event.is_set() or has_port or port_try == 2:
                break
            th.join()
            rr = box.get("r")
            if not (rr and rr.outcome.cause == "port_in_use"):
                break
            # free_port() released the port before llama-server bound it and another process took it: a new port
            echo(f"gpcrun: port {url_of(argv).rsplit(':', 1)[1]} was taken before llama-server bound it; retrying")
        measured = None
        bench_error = None
        timer = None
        if run.ready_event.is_set():
            if spec.timeout_s:  # the job's time limit covers the bench too: what the load left of it
                left = max(0.0, spec.timeout_s - (time.monotonic() - t_start))
                timer = threading.Timer(left, lambda: run.request_stop("job timeout"))
                timer.start()
            try:
                cfg = BenchConfig(spec.prompt_tokens, spec.gen_tokens, spec.repetitions, True, tuple(spec.concurrency))
                measured = run_bench(BenchClient(run.url, timeout_s=spec.timeout_s or 600.0), cfg, echo).to_json()
            except Exception as e:  # noqa: BLE001 - recorded in the receipt
                bench_error = f"{type(e).__name__}: {e}"
        timed_out = timer is not None and not timer.is_alive() and run._stop_reason == "job timeout"
        if timer:
            timer.cancel()
        run.request_stop("bench finished")
        th.join()
        rr = box.get("r")
        outcome = rr.outcome.to_json() if rr else {"kind": "crashed", "exit_code": 12, "cause": None,
                                                   "reason": "the run ended without a result"}
        if timed_out:
            outcome = {"kind": "timeout", "exit_code": 14, "cause": "job_timeout",
                       "reason": f"the job exceeded its {spec.timeout_s:g} s limit"}
        elif outcome["kind"] == "clean_stop" and bench_error:
            outcome = {"kind": "bench_failed", "exit_code": 15, "cause": "bench", "reason": bench_error}
        if measured is not None:
            measured.update(compare_with_forecast(plan_doc, measured["decode_tok_s"]["mean"], spec.floor_tok_s))
            if run.watchdog is not None:
                measured["peak_rss_bytes"] = run.watchdog.envelope.peak_child_rss_bytes
                measured["peak_vram_bytes"] = run.watchdog.envelope.peak_child_vram_bytes or None
        return receipt(argv, measured, rr.envelope if rr else None, outcome)
    except KeyboardInterrupt:  # SIGINT/SIGTERM to gpcrun: stop and reap the server before going up
        if current:
            current["run"].request_stop("interrupted")
            current["th"].join(30)
        raise


def _is_ref(model: str) -> bool:
    from .hub import is_hub_ref
    return is_hub_ref(model)


def job_summary(doc: dict) -> dict:
    """The batch table's numbers from a receipt."""
    m = doc.get("measured") or {}
    env = doc.get("envelope") or {}
    plan = (doc.get("plan") or {})
    fc = ((plan.get("plan") or plan.get("nearest") or {}).get("forecast") or {})
    vram = env.get("peak_child_vram_bytes") or {}
    return {"verdict": plan.get("verdict"), "forecast_tok_s": fc.get("decode_tok_s"),
            "prefill_tok_s": (m.get("prefill_tok_s") or {}).get("mean"),
            "decode_tok_s": (m.get("decode_tok_s") or {}).get("mean"), "error_pct": m.get("prediction_error_pct"),
            "peak_vram_mib": round(max(v for v in vram.values() if v) / 2**20, 1) if any(vram.values()) else None,
            "peak_ram_mib": round(env["peak_child_rss_bytes"] / 2**20, 1) if env.get("peak_child_rss_bytes") else None}
