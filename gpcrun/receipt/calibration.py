"""Calibration: realised decode efficiency from the receipts of earlier runs narrows the planner's forecast."""
from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:
    from ..plan import Calibration
    from .store import ReceiptStore


def argv_threads(argv: Sequence[str]) -> int | None:
    """-t/--threads as llama-server reads it: the last one wins; '--threads=N' is no llama-server syntax (it rejects
    it), so a run with it never loaded and its receipt calibrates nothing."""
    from ..server_args import ServerArgs, ServerArgsError, settings
    try:
        return settings.threads(ServerArgs.parse(list(argv), strict=False))
    except ServerArgsError:
        return None


# A measured decode speed above this multiple of the bandwidth ceiling is not physics (a hand-made or damaged
# receipt): such a receipt calibrates nothing. Below the ceiling any fraction is possible (a slow machine).
MAX_EFFICIENCY = 2.0


def _physical(r: dict) -> bool:
    d, c = r.get("decode_tok_s"), r.get("ceiling_decode_tok_s")
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0 for x in (d, c)):
        return False
    return d / c <= MAX_EFFICIENCY


def calibrate(rows: Iterable[dict], model_fp: str | None, hardware_fp: str | None, arch: str | None,
              threads: int | None = None) -> "Calibration | None":
    """Realised efficiency (measured decode / ceiling) from good receipts: same model and hardware first,
    else same hardware and architecture (wider band). Failed runs and runs where the watchdog fired don't count."""
    good = [r for r in rows if r.get("outcome") == "clean_stop" and not r.get("watchdog_fired") and _physical(r)]
    exact = [r for r in good if r.get("model_fingerprint") == model_fp and r.get("hardware_fingerprint") == hardware_fp]
    arch_ = [r for r in good if r.get("hardware_fingerprint") == hardware_fp and r.get("architecture") == arch]
    # CPU decode speed depends on the thread count: runs at the same -t (None = llama.cpp's default) first;
    # runs at other thread counts only when there are none, with a wider band
    tiers = [(exact, "same model and hardware", 1.0), (arch_, "same hardware and architecture", 2.0)]
    pool, how, widen = [], "", 1.0
    for same_threads in (True, False):
        for cands, how, widen in tiers:
            pool = [r for r in cands if r.get("threads") == threads] if same_threads else cands
            if pool:
                break
        if pool:
            if not same_threads:
                how, widen = how + ", other thread counts", widen * 1.5
            break
    if not pool:
        return None
    effs = [r["decode_tok_s"] / r["ceiling_decode_tok_s"] for r in pool]
    eff = statistics.median(effs)
    spread = statistics.stdev(effs) / eff if len(effs) > 1 else 0.0
    # band narrows as receipts accumulate: 15 % at one receipt, ~5 % floor, plus the observed spread
    half = min(0.9, widen * max(0.05, 0.15 / len(effs) ** 0.5 + 2 * spread))
    from ..plan import Calibration
    return Calibration(eff, (1 - half, 1 + half), len(effs), f"calibrated from {len(effs)} receipt(s), {how}")


def load_calibration(info, target, threads: int | None = None, store: "ReceiptStore | None" = None):
    """Calibration for this model on this machine from the receipt store, or None (uncalibrated)."""
    from ..model import header_sha256
    from .store import ReceiptStore
    store = store or ReceiptStore()
    rows = store.query()
    if not rows:
        return None
    return calibrate(rows, header_sha256(info), target.fingerprint, info.architecture, threads)
