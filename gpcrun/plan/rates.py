"""Measured host rates (pure): what llama.cpp's own CPU kernels achieve on this machine, per weight type and
thread count, from the calibration document (gpcrun/calibrate/run.py: llama-bench on synthetic models).

- decode: effective bytes/s (weights read per token x tok/s) per (type, threads);
- prefill: the weights a batch token computes with (plan/prefill.py batch_work) x tok/s (parameter-tokens/s)
  per type at the largest thread count measured, once the per-layer and per-batch costs measured on many thin
  layers are taken out; fewer threads scale it down linearly (prefill is compute-bound).
A type that was not measured takes the measured type with the nearest bits per weight (same family -- K-quant
or not -- first); a thread count between two measured ones is interpolated linearly, above the largest one it
stays there (no more cores to add). The band comes from the spread of the raw samples. Attention over the KV
cache is its own measured cost per unit of work (decode at a depth less decode at depth 0), not bytes at a
weight rate: on the CPU it is far slower than streaming the same bytes.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..model import GGML_QUANT_SIZES, GGML_TYPE_NAMES

_BY_NAME = {name: t for t, name in GGML_TYPE_NAMES.items()}


def _bytes_rate(d: dict, model: dict | None, c: float | None, fixed: float | None) -> float:
    """A big model's bytes/s once the per-token and per-layer costs are taken out of its time (its raw rate when
    either is unknown or would leave no time for the bytes)."""
    if not model or c is None or fixed is None or not d.get("tok_s"):
        return float(d["bytes_per_s"])
    t_bytes = 1 / d["tok_s"] - c - model["n_layer"] * fixed
    return d["bytes_per_token"] / t_bytes if t_bytes > 0.2 / d["tok_s"] else float(d["bytes_per_s"])


def _at(points, threads: int) -> float:
    """Linear between measured thread counts, flat beyond the ends."""
    points = sorted(points)
    if threads <= points[0][0]:
        return points[0][1]
    for (t0, r0), (t1, r1) in zip(points, points[1:]):
        if t0 <= threads <= t1:
            return r0 + (r1 - r0) * (threads - t0) / (t1 - t0)
    return points[-1][1]


def _scaled(points, threads: int) -> float:
    """A compute-bound cost in seconds: below the fewest threads measured it grows as 1/threads."""
    if not points:
        return 0.0
    lo_t, lo_s = min(points)
    return lo_s * lo_t / threads if threads < lo_t else _at(points, threads)


def _prefill_rates(doc: dict, decode: tuple = ()):
    """(per type: (type, threads, parameter-tokens/s), per-layer and per-token costs by thread count) from the
    prefill rows. A row's parameters are those every batch token computes with (n_params_prefill; older
    documents: all, n_params); the bytes only its output token reads (one_token_bytes) take their time at the
    type's decode rate (`decode`: (type, threads, bytes/s)) per batch. With thin-layer rows (prefill_fixed: many
    layers and one, of one type), the per-layer cost is the many-layer batch's time less the one's, less their
    weights' work at that type's rate, per layer; and each type's rate is its time less its layers' and the
    per-token costs. Two rounds settle the dependence."""
    from .constants import PREFILL_BATCH_TOKENS

    def once_s(p: dict) -> float:  # the output token's weights, read once per batch, per prompt token
        pts = [(t, r) for n, t, r in decode if n == p.get("type", "Q8_0")]
        b = p.get("one_token_bytes") or 0
        return b / _at(pts, int(p["threads"])) / PREFILL_BATCH_TOKENS if b and pts else 0.0

    rows = [p for p in doc.get("prefill") or () if p.get("tok_s") and (p.get("n_params_prefill") or p.get("n_params"))]
    n_of = lambda p: float(p.get("n_params_prefill") or p["n_params"])  # noqa: E731
    models = doc.get("models") or {}
    thin: dict[int, dict[int, dict]] = {}
    for f in doc.get("prefill_fixed") or ():
        if f.get("tok_s") and f.get("n_params_prefill") and f.get("n_layer"):
            thin.setdefault(int(f["threads"]), {})[int(f["n_layer"])] = f
    layer: dict[int, float] = {}
    token: dict[int, float] = {}
    for _ in range(2):
        pre = []
        for p in rows:
            t, n_layer = int(p["threads"]), (models.get(p["type"]) or {}).get("n_layer", 0)
            spent = 1 / p["tok_s"]
            cost = once_s(p) + (n_layer * _at(list(layer.items()), t) + _at(list(token.items()), t) if layer else 0.0)
            pre.append((p["type"], t, n_of(p) / (spent - cost if spent - cost > 0.2 * spent else spent)))
        if not pre:
            return (), (), ()
        for t, by_n in thin.items():
            if len(by_n) < 2:
                continue
            (n1, one), (n2, many) = min(by_n.items()), max(by_n.items())
            ty = one.get("type", "Q8_0")
            have = [(pt, r) for n, pt, r in pre if n == ty] or [(pt, r) for _, pt, r in pre]
            rate = _scaled([(pt, 1 / r) for pt, r in have], t)  # s per parameter-token, compute-bound
            spent_many, spent_one = 1 / many["tok_s"] - once_s(many), 1 / one["tok_s"] - once_s(one)
            per = (spent_many - spent_one - (n_of(many) - n_of(one)) * rate) / (n2 - n1)
            layer[t] = max(0.0, per)
            token[t] = max(0.0, spent_one - n_of(one) * rate - n1 * layer[t])
        if not layer:
            break
    return tuple(pre), tuple(sorted(layer.items())), tuple(sorted(token.items()))


def bits_per_weight(type_name: str) -> float | None:
    t = _BY_NAME.get(type_name)
    if t is None or t not in GGML_QUANT_SIZES:
        return None
    block, size = GGML_QUANT_SIZES[t]
    return 8.0 * size / block


@dataclass(frozen=True)
class HostRates:
    decode: tuple[tuple[str, int, float], ...]  # (type, threads, bytes/s)
    prefill: tuple[tuple[str, int, float], ...]  # (type, threads, parameter-tokens/s)
    spread: tuple[float, float]  # min/mean and max/mean of every decode sample: the band
    source: str
    measured_at_unix: int | None = None
    layer_fixed: tuple[tuple[int, float], ...] = ()  # (threads, seconds per layer per token beyond its bytes)
    attention: tuple[tuple[str, int, int, float], ...] = ()  # (KV type, head size, threads, s per attention unit)
    token_fixed: tuple[tuple[int, float], ...] = ()  # (threads, seconds per token beyond its layers)
    crossing_s: float | None = None  # a device's cost per crossing to the CPU and back (one each way), measured
    prefill_layer: tuple[tuple[int, float], ...] = ()  # (threads, s per layer per prompt token beyond its weights)
    prefill_token: tuple[tuple[int, float], ...] = ()  # (threads, s per prompt token beyond its layers)

    @classmethod
    def from_doc(cls, doc: dict) -> "HostRates | None":
        dec = tuple((d["type"], int(d["threads"]), float(d["bytes_per_s"])) for d in doc.get("decode") or ()
                    if d.get("bytes_per_s"))
        if not dec:
            return None
        pre, pre_layer, pre_token = _prefill_rates(doc, dec)
        lo, hi = 1.0, 1.0
        for d in doc.get("decode") or ():
            s = [x for x in (d.get("samples_tok_s") or ()) if x]
            if s and d.get("tok_s"):
                lo, hi = min(lo, min(s) / d["tok_s"]), max(hi, max(s) / d["tok_s"])
        when = doc.get("measured_at_unix")
        r = cls(dec, pre, (lo, hi), "calibrated: " + (doc.get("method") or "llama-bench"), when)
        fixed, per_token = [], []
        one = {int(f["threads"]): f for f in doc.get("token_fixed") or () if f.get("tok_s")}
        for f in doc.get("layer_fixed") or ():  # many thin layers: time per token less their bytes' time
            if not (f.get("tok_s") and f.get("n_layer")):
                continue
            t = int(f["threads"])
            t_bytes = f["bytes_per_token"] / r.decode_bytes_per_s(f.get("type", "Q8_0"), t)
            if t in one:  # and less what a token costs beyond its layers: one thin layer's time, less that layer
                o = one[t]
                layer = (1 / f["tok_s"] - 1 / o["tok_s"]) / (f["n_layer"] - o["n_layer"])
                c = max(0.0, 1 / o["tok_s"] - o["n_layer"] * layer)
                per_token.append((t, c))
                fixed.append((t, max(0.0, layer - t_bytes / f["n_layer"])))
            else:
                fixed.append((t, max(0.0, (1 / f["tok_s"] - t_bytes) / f["n_layer"])))
        if per_token:  # the big models' time less the per-token and per-layer costs is what their bytes took
            models = doc.get("models") or {}
            c_at, f_at = dict(per_token), dict(fixed)
            r = replace(r, decode=tuple(
                (d["type"], int(d["threads"]), _bytes_rate(d, models.get(d["type"]), c_at.get(int(d["threads"])),
                                                           f_at.get(int(d["threads"]))))
                for d in doc.get("decode") or () if d.get("bytes_per_s")))
        cross = [(1 / x["tok_s"] - 1 / f["tok_s"]) / x["crossings"] for x in doc.get("crossing") or ()
                 for f in doc.get("layer_fixed") or () if x.get("tok_s") and f.get("tok_s") and x.get("crossings")
                 and f["threads"] == x["threads"]]
        attn = []
        rows = {(a["type"], a.get("head_dim", 128), a["threads"], a["depth"]): a for a in doc.get("attention") or ()}
        for (ty, hd, t, depth), a in rows.items():  # the extra time per token at depth over depth 0, per unit
            base = rows.get((ty, hd, t, 0))
            if depth and base and a.get("tok_s") and base.get("tok_s"):
                per = (1 / a["tok_s"] - 1 / base["tok_s"]) / (depth * a["units_per_depth_token"])
                attn.append((ty.upper(), int(hd), int(t), max(0.0, per)))
        return replace(r, layer_fixed=tuple(sorted(fixed)), attention=tuple(sorted(attn)),
                       token_fixed=tuple(sorted(per_token)), crossing_s=max(0.0, min(cross)) if cross else None,
                       prefill_layer=pre_layer, prefill_token=pre_token)

    def types(self) -> list[str]:
        return sorted({t for t, _, _ in self.decode})

    def nearest_type(self, type_name: str, have: list[str] | None = None) -> str:
        """type_name if measured (among `have`, default the decode types), else the nearest bits per weight,
        same family (K-quant or not) first."""
        have = sorted(have) if have is not None else self.types()
        if type_name in have:
            return type_name
        bpw = bits_per_weight(type_name)
        if bpw is None:
            return have[0]
        fam = type_name.endswith("_K") or "_K_" in type_name
        return min(have, key=lambda h: (abs((bits_per_weight(h) or 99) - bpw),
                                        (h.endswith("_K") or "_K_" in h) != fam, h))

    def token_fixed_s(self, threads: int) -> float:
        """What a token costs on this device beyond its layers (measured: one thin layer less that layer), else 0
        (older calibrations: it is inside the measured rates)."""
        return _at(list(self.token_fixed), threads) if self.token_fixed else 0.0

    def prefill_layer_s(self, threads: int) -> float:
        """Seconds per layer per prompt token beyond its weights' work (0 when not measured: older calibrations
        have it inside their rates)."""
        return _scaled(self.prefill_layer, threads)

    def prefill_token_s(self, threads: int) -> float:
        """Seconds per prompt token beyond its layers (graph, output), 0 when not measured."""
        return _scaled(self.prefill_token, threads)

    def layer_fixed_s(self, threads: int) -> float | None:
        """The host's measured cost per layer per token beyond its bytes, None when not measured."""
        return _at(list(self.layer_fixed), threads) if self.layer_fixed else None

    def attention_s_per_unit(self, kv_type: str, threads: int, head_dim: int = 128) -> float | None:
        """Seconds per attention unit (one cached token x one query head x (K + V head dims) x one layer) for
        this KV type (quantized types not measured take q8_0's, float ones f16's) at the nearest head size
        measured (the kernels differ by head size); None when not measured."""
        kv = kv_type.upper()
        have = {t for t, _, _, _ in self.attention}
        if not have:
            return None
        if kv not in have:
            kv = "F16" if kv in ("F16", "BF16", "F32") or "Q8_0" not in have else "Q8_0"
            kv = kv if kv in have else sorted(have)[0]
        hd = min({h for n, h, _, _ in self.attention if n == kv}, key=lambda h: (abs(h - head_dim), h))
        return _at([(t, c) for n, h, t, c in self.attention if n == kv and h == hd], threads)

    def decode_bytes_per_s(self, type_name: str, threads: int) -> float:
        ty = self.nearest_type(type_name)
        return _at([(t, r) for n, t, r in self.decode if n == ty], threads)

    def mix_bytes_per_s(self, mix: dict[str, int], threads: int) -> float | None:
        """The effective rate for reading a mix of types (bytes by type): total bytes over the summed times."""
        total = sum(mix.values())
        if total <= 0:
            return None
        return total / sum(b / self.decode_bytes_per_s(t, threads) for t, b in mix.items() if b)

    def prefill_params_per_s(self, mix: dict[str, int], threads: int) -> float | None:
        """Parameter-tokens/s for a mix of types (weighted like mix_bytes_per_s), None when not measured."""
        if not self.prefill:
            return None
        have = sorted({t for t, _, _ in self.prefill})
        total = sum(mix.values())
        if total <= 0:
            return None
        t_sum = 0.0
        for ty, b in mix.items():
            near = self.nearest_type(ty, have)
            pts = sorted((t, r) for n, t, r in self.prefill if n == near)
            if threads < pts[0][0]:  # compute-bound: below the fewest threads measured, linear in threads
                rate = pts[0][1] * threads / pts[0][0]
            else:
                rate = _at(pts, threads)
            t_sum += b / rate
        return total / t_sum
