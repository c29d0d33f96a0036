"""gpcrun bench MODEL [-- llama-server args] | gpcrun bench --url URL: measure, then write a receipt."""
from __future__ import annotations

import os
import signal
import sys
import threading

import click

from ..model import KV_CACHE_TYPES
from ..exits import Exit
from .main import emit_json, main


def _csv_ints(ctx, param, value):
    if not value:
        return ()
    try:
        out = tuple(int(x) for x in value.split(","))
    except ValueError:
        raise click.BadParameter("expected comma-separated integers, e.g. 1,4") from None
    if any(x < 1 for x in out):
        raise click.BadParameter("concurrency levels must be >= 1")
    return out


@main.command("bench", context_settings={"ignore_unknown_options": True})
@click.argument("model", required=False)
@click.option("--url", default=None, help="Attach to a running llama-server instead of starting one.")
@click.option("-p", "--prompt-tokens", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("-n", "--gen-tokens", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("-r", "--repetitions", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--concurrency", callback=_csv_ints, default="", help="Concurrency levels, e.g. 1,4.")
@click.option("--no-warmup", is_flag=True)
@click.option("--ctx", type=click.IntRange(min=0), default=None)
@click.option("--kv-type", type=click.Choice(KV_CACHE_TYPES), default=None)
@click.option("--parallel", type=click.IntRange(min=1), default=None, help="Slots (default: max concurrency, or 1).")
@click.option("--floor", type=click.FloatRange(min=0), default=1.0, show_default=True)
@click.option("--force", is_flag=True, help="Bench even when the plan refuses.")
@click.option("--server-bin", default=None)
@click.option("--redact-paths", is_flag=True, help="Replace the home directory and host name in the receipt.")
@click.option("--markdown", is_flag=True, help="Print the receipt as a GitHub-ready Markdown block.")
@click.option("--json", "as_json", is_flag=True, help="Print the receipt JSON.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
@click.argument("server_args", nargs=-1, type=click.UNPROCESSED)
def bench_cmd(model, url, prompt_tokens, gen_tokens, repetitions, concurrency, no_warmup, ctx, kv_type, parallel,
              floor, force, server_bin, redact_paths, markdown, as_json, quiet, server_args):
    """Prefill/decode speed, TTFT and inter-token latency through the HTTP API; writes a receipt."""
    from ..bench import BenchClient, BenchConfig, BenchError, api_key_from, run_bench
    from ..hardware.profile import get_profile
    from ..model import header_sha256, load_model
    from ..receipt import ReceiptStore, build_receipt, compare_with_forecast

    if not model and not url:
        raise click.UsageError("give a MODEL to start, or --url of a running server")
    say = (lambda m: None) if quiet else (lambda m: click.echo(f"gpcrun bench: {m}", err=True))
    cfg = BenchConfig(prompt_tokens, gen_tokens, repetitions, not no_warmup, concurrency)
    profile = get_profile().to_json()
    info = load_model(model) if model else None
    plan_doc = None
    clients: list = []
    run = None
    run_thread = None
    argv: list[str] = []
    outcome = None
    measured = None
    bench_error = None
    if url is None:
        from ..launch.binary import find_tool
        from ..launch.run import RunOptions, ServerRun, free_port, new_run_dir, server_argv, write_json_atomic
        from ..plan import make_plan
        from .plan_cmd import build_request, build_target, load_calibration
        from .serve_cmd import plan_summary

        binary = find_tool("llama-server", server_bin)
        slots = parallel or max(concurrency or (1,))
        req = build_request(ctx, kv_type, slots, floor, None, server_args)
        target = build_target((), (), False)
        plan = make_plan(info, target, req, load_calibration(info, target, req.pinned))
        plan_doc = plan.to_json()
        say(plan_summary(plan))
        run_dir = new_run_dir()
        write_json_atomic(run_dir / "plan.json", plan_doc)
        if plan.verdict != "ship" and not force:
            for r in plan.reasons:
                click.echo(f"  - {r}", err=True)
            _finish(None, profile, info, plan_doc, list(plan.argv), None, None,
                    {"kind": "refused", "exit_code": Exit.REFUSED.code, "cause": "plan", "reason": "; ".join(plan.reasons)},
                    str(run_dir), redact_paths, markdown, as_json, floor, header_sha256)
            sys.exit(Exit.REFUSED.code)
        args = list(plan.argv) if plan.argv else ["-m", model, *server_args]
        if "--metrics" not in args:
            args.append("--metrics")
        argv = server_argv(str(binary), args, port=None if _has_port(args) else free_port())
        run = ServerRun(RunOptions(argv=argv, run_dir=run_dir, model_bytes=info.file_size_bytes, quiet=True,
                                   echo=say))
        run.install_signal_handlers()
        stop_on_signal = signal.getsignal(signal.SIGTERM)

        def on_signal(signum, frame):
            stop_on_signal(signum, frame)
            for c in clients:  # llama-server would wait for our request in flight until its SIGKILL
                c.abort()
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        result_box: dict = {}

        def serve() -> None:
            try:
                result_box["r"] = run.run_until_stopped()
            except Exception as e:  # noqa: BLE001 - the receipt records it instead of a result
                result_box["error"] = f"{type(e).__name__}: {e}"

        run_thread = threading.Thread(target=serve, daemon=True)
        run_thread.start()
        while not run.ready_event.wait(0.1):
            if not run_thread.is_alive():
                break
        url = run.url
    if run is None or run.ready_event.is_set():
        try:
            say(f"benchmarking {url}: {repetitions} x prefill {prompt_tokens} + decode {gen_tokens}")
            client = BenchClient(url, api_key=api_key_from(server_args))
            clients.append(client)
            try:
                res = run_bench(client, cfg, say, cancel=run._stop_requested.is_set if run is not None else None)
            finally:
                client.s.close()  # an idle keep-alive connection would hold a stopping server up
            measured = res.to_json()
        except (BenchError, OSError, ValueError) as e:
            bench_error = str(e)
        except Exception as e:  # noqa: BLE001 - requests errors etc.: the receipt still records the failure
            bench_error = f"{type(e).__name__}: {e}"
    envelope = None
    run_dir_s = None
    if run is not None:
        stop = run._stop_reason if run._stop_requested.is_set() else ""  # a signal while the bench ran
        if not stop:
            run.request_stop("bench finished")
        run_thread.join()
        rr = result_box.get("r")
        envelope = rr.envelope if rr else None
        outcome = rr.outcome.to_json() if rr else {
            "kind": "crashed", "exit_code": 12, "cause": "gpcrun",
            "reason": "the supervised run ended without a result: " + result_box.get("error", "unknown")}
        run_dir_s = str(run.opts.run_dir)
        if outcome and outcome["kind"] == "clean_stop" and bench_error:
            outcome = {"kind": "bench_failed", "exit_code": 15, "cause": "interrupted" if stop else "bench",
                       "reason": (f"interrupted ({stop}): " if stop else "") + bench_error}
    else:
        outcome = {"kind": "bench_failed" if bench_error else "clean_stop", "exit_code": 15 if bench_error else 0,
                   "cause": "bench" if bench_error else None, "reason": bench_error or "attached to " + url}
    if measured is not None:
        dec = measured["decode_tok_s"]["mean"]
        measured.update(compare_with_forecast(plan_doc, dec, floor))
        if run is not None and run.watchdog is not None:
            measured["peak_rss_bytes"] = run.watchdog.envelope.peak_child_rss_bytes
            measured["peak_vram_bytes"] = run.watchdog.envelope.peak_child_vram_bytes or None
    doc = _finish(run, profile, info, plan_doc, argv, measured, envelope, outcome, run_dir_s, redact_paths, markdown,
                  as_json, floor, header_sha256)
    sys.exit(doc["outcome"]["exit_code"])


def _has_port(args) -> bool:
    return any(a == "--port" or a.startswith("--port=") for a in args)


def _finish(run, profile, info, plan_doc, argv, measured, envelope, outcome, run_dir, redact, markdown, as_json,
            floor, header_sha256):
    from ..receipt import ReceiptStore, build_receipt, to_markdown

    model = None
    if info is not None:
        model = {"file_name": os.path.basename(info.path), "path": info.path, "size_bytes": info.file_size_bytes,
                 "header_sha256": header_sha256(info), "architecture": info.architecture,
                 "quant_mix_bytes": info.quant_mix(), "tensor_bytes": info.tensor_bytes}
    build = (measured or {}).get("server", {}).get("build_info") if measured else None
    doc = build_receipt(kind="bench", hardware=profile, model=model, plan=plan_doc, argv=argv, env=os.environ,
                        llama_cpp={"build_info": build}, measured=measured, envelope=envelope, outcome=outcome,
                        run_dir=run_dir, redact_path_names=redact)
    path = ReceiptStore().save(doc)
    if as_json:
        emit_json(doc)
    elif markdown:
        click.echo(to_markdown(doc))
    else:
        m = measured or {}
        d, p = m.get("decode_tok_s") or {}, m.get("prefill_tok_s") or {}
        if d:
            click.echo(f"prefill {p.get('mean'):.1f} ± {p.get('sd'):.1f} tok/s; decode {d.get('mean'):.1f} ±"
                       f" {d.get('sd'):.1f} tok/s; forecast {m.get('forecast_decode_tok_s')}"
                       f" (error {m.get('prediction_error_pct')} %)")
        click.echo(f"outcome: {outcome['kind']}: {outcome['reason']}")
    click.echo(f"receipt: {path}", err=True)
    return doc
