"""Measure a running llama-server through its HTTP API: prefill, decode, streamed TTFT/ITL, concurrency.

Every request sends cache_prompt=false and checks timings.cache_n == 0, so prefill is never served from the
prompt cache; prompts are token-id lists, unique per repetition and exactly P tokens long; decode uses
n_predict with ignore_eos so its length is exact.
"""
from __future__ import annotations

import json
import random
import socket
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import requests
import requests.adapters
import urllib3

from .errors import BenchError

_WORDS = ("time person year way day thing man world life hand part child eye woman place work week case point "
          "government company number group problem fact house river garden music paper window light story "
          "water money school family night morning question answer market system program city country").split()


@dataclass(frozen=True)
class Stats:
    mean: float | None
    sd: float | None
    median: float | None
    samples: tuple[float, ...]

    @classmethod
    def of(cls, xs: Sequence[float]) -> "Stats":
        xs = tuple(float(x) for x in xs)
        if not xs:
            return cls(None, None, None, ())
        return cls(statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0, statistics.median(xs), xs)

    def to_json(self) -> dict:
        return {"mean": _r(self.mean), "sd": _r(self.sd), "median": _r(self.median),
                "samples": [_r(x) for x in self.samples]}


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(x, nd)


def percentile(xs: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no data."""
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


@dataclass(frozen=True)
class BenchConfig:
    prompt_tokens: int = 512
    gen_tokens: int = 128
    repetitions: int = 5
    warmup: bool = True
    concurrency: tuple[int, ...] = ()
    seed: int = 0
    timeout_s: float = 600.0


@dataclass
class BenchResult:
    config: BenchConfig
    server: dict
    prefill_tok_s: Stats
    decode_tok_s: Stats
    ttft_ms: dict
    itl_ms: dict
    concurrency: list = field(default_factory=list)
    metrics: dict | None = None
    wall_s: float = 0.0

    def to_json(self) -> dict:
        return {"config": self.config.__dict__ | {"concurrency": list(self.config.concurrency)},
                "server": self.server, "prefill_tok_s": self.prefill_tok_s.to_json(),
                "decode_tok_s": self.decode_tok_s.to_json(), "ttft_ms": self.ttft_ms, "itl_ms": self.itl_ms,
                "concurrency": self.concurrency, "server_metrics": self.metrics, "wall_s": _r(self.wall_s, 3)}


class _Live:
    """The connections a client (and its concurrency workers) have in use, and whether it was aborted."""

    def __init__(self) -> None:
        self.conns: set = set()
        self.aborted = False


class _TrackingAdapter(requests.adapters.HTTPAdapter):
    """Remembers the connections in use, so that abort() can cut a request that is waiting for its answer,
    and refuses new ones once aborted."""

    def __init__(self, live: _Live) -> None:
        self._live = live
        super().__init__()

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        live = self._live

        class Pool(urllib3.HTTPConnectionPool):
            def _get_conn(self, timeout=None):
                conn = super()._get_conn(timeout)
                live.conns.add(conn)  # first: an abort() from here on shuts this connection down
                if live.aborted:  # an abort() before the add: no request may start any more
                    live.conns.discard(conn)
                    raise BenchError("aborted")
                return conn

            def _put_conn(self, conn):
                live.conns.discard(conn)
                return super()._put_conn(conn)

        self.poolmanager.pool_classes_by_scheme = dict(self.poolmanager.pool_classes_by_scheme, http=Pool)


class BenchClient:
    def __init__(self, url: str, session: requests.Session | None = None, timeout_s: float = 600.0,
                 clock: Callable[[], float] = time.perf_counter, api_key: str | None = None,
                 model: str | None = None) -> None:
        self.url = url.rstrip("/")
        # one model behind a llama-server router: named in each POST body ("model") and GET query (?model=),
        # tools/server/README.md "Routing requests"; a single-model server ignores both
        self.model = model
        self._params = {"model": model} if model else None
        self._live = _Live()
        if session is None:
            session = requests.Session()
            session.mount("http://", _TrackingAdapter(self._live))
        self.s = session
        self.timeout_s = timeout_s
        self.clock = clock
        self.api_key = api_key
        if api_key:  # a server started with --api-key answers 401 to everything else
            self.s.headers["Authorization"] = f"Bearer {api_key}"

    def abort(self) -> None:
        """Cut the requests in flight (safe from a signal handler): the waiting call fails at once, and the
        server sees its client gone. llama-server stopping on SIGTERM waits for a request it will never answer,
        until the supervisor's SIGKILL, unless its client hangs up."""
        self._live.aborted = True
        for conn in list(self._live.conns):
            sock = getattr(conn, "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _body(self, body: dict) -> dict:
        return {**body, "model": self.model} if self.model else body

    def _post(self, path: str, body: dict) -> dict:
        r = self.s.post(self.url + path, json=self._body(body), timeout=self.timeout_s)
        if r.status_code == 400 and not self.model and "model name is missing" in r.text:
            raise BenchError("this is a llama-server router: name the model to measure with --model NAME (one"
                             " of its GET /models ids)")
        if r.status_code != 200:
            raise BenchError(f"POST {path}: HTTP {r.status_code}: {r.text[:200]}")
        return r.json()

    def props(self) -> dict:
        r = self.s.get(self.url + "/props", params=self._params, timeout=30)
        r.raise_for_status()
        return r.json()

    def metrics(self) -> dict | None:
        """llama.cpp's Prometheus counters (needs --metrics), as name -> value; None when disabled."""
        try:
            r = self.s.get(self.url + "/metrics", params=self._params, timeout=10)
        except requests.RequestException:
            return None
        if r.status_code != 200:
            return None
        out = {}
        for line in r.text.splitlines():
            if line and not line.startswith("#"):
                parts = line.rsplit(" ", 1)
                if len(parts) == 2:
                    try:
                        out[parts[0]] = float(parts[1])
                    except ValueError:
                        pass
        return out

    def token_pool(self, seed: int) -> list[int]:
        """Ordinary text tokens of this model's vocabulary, to build exact-length prompts from."""
        rnd = random.Random(seed)
        text = " ".join(rnd.choice(_WORDS) for _ in range(600))
        toks = self._post("/tokenize", {"content": text, "add_special": False}).get("tokens") or []
        pool = sorted({t for t in toks if isinstance(t, int)})
        if len(pool) < 8:
            raise BenchError("the server's tokenizer gave too few distinct tokens to build prompts")
        return pool

    def complete(self, prompt: list[int], n_predict: int, **kw) -> dict:
        body = {"prompt": prompt, "n_predict": n_predict, "cache_prompt": False, "ignore_eos": True,
                "temperature": 0.0, **kw}
        out = self._post("/completion", body)
        check_timings(out.get("timings") or {})
        return out

    def stream(self, prompt: list[int], n_predict: int) -> tuple[float, list[float], dict]:
        """(time to first token s, inter-token gaps s, final timings) from a streamed completion."""
        body = {"prompt": prompt, "n_predict": n_predict, "cache_prompt": False, "ignore_eos": True,
                "temperature": 0.0, "stream": True, "return_tokens": True}
        t0 = self.clock()
        first = None
        last = None
        gaps: list[float] = []
        timings: dict = {}
        # Connection: close: llama-server drops the connection after a streamed answer, and a request sent on
        # it from the keep-alive pool then fails with RemoteDisconnected (1 in 2 back-to-back streams here)
        with self.s.post(self.url + "/completion", json=self._body(body), stream=True, timeout=self.timeout_s,
                         headers={"Connection": "close"}) as r:
            if r.status_code != 200:
                raise BenchError(f"POST /completion (stream): HTTP {r.status_code}")
            for raw in r.iter_lines():
                if not raw or not raw.startswith(b"data: "):
                    continue
                now = self.clock()
                try:
                    ev = json.loads(raw[6:])
                except ValueError:
                    continue
                n_tok = len(ev.get("tokens") or [])
                if n_tok:
                    if first is None:
                        first = now - t0  # first *token*, not the first chunk
                    elif last is not None:
                        gaps.extend([(now - last) / n_tok] * n_tok)
                    last = now
                if ev.get("stop"):
                    timings = ev.get("timings") or {}
        if first is None:
            raise BenchError("the stream produced no tokens")
        if timings:
            check_timings(timings, len(prompt), n_predict)
        return first, gaps, timings


def check_timings(t: dict, prompt_n: int | None = None, predicted_n: int | None = None) -> None:
    """A measurement is only usable when the prompt was computed, not served from the cache, at the exact
    lengths asked for."""
    if t.get("cache_n", 0) != 0:
        raise BenchError(f"prompt cache served {t.get('cache_n')} tokens despite cache_prompt=false")
    if prompt_n is not None and t.get("prompt_n") != prompt_n:
        raise BenchError(f"prompt_n {t.get('prompt_n')} != {prompt_n} requested")
    if predicted_n is not None and t.get("predicted_n") != predicted_n:
        raise BenchError(f"predicted_n {t.get('predicted_n')} != {predicted_n} requested")


def make_prompt(pool: Sequence[int], n: int, salt: int) -> list[int]:
    """n tokens from the pool, different for every salt (repetition) so nothing can be reused."""
    rnd = random.Random(salt * 7919 + n)
    return [pool[rnd.randrange(len(pool))] for _ in range(n)]


def run_bench(client: BenchClient, cfg: BenchConfig, on_progress: Callable[[str], None] | None = None,
              cancel: Callable[[], bool] | None = None) -> BenchResult:
    """cancel() is asked before every request: a server asked to stop (SIGTERM) keeps serving a keep-alive
    connection that still gets requests, so the bench must stop sending them."""
    t_start = time.perf_counter()
    _say = on_progress or (lambda _m: None)

    def check(what: str) -> None:
        if cancel is not None and cancel():
            raise BenchError("cancelled before " + what)

    def say(msg: str) -> None:
        check(msg)
        _say(msg)

    props = client.props()
    pool = client.token_pool(cfg.seed)
    salt = cfg.seed * 1000
    if cfg.warmup:
        say("warm-up")
        salt += 1
        client.complete(make_prompt(pool, min(cfg.prompt_tokens, 64), salt), 8)
    pre, dec = [], []
    for i in range(cfg.repetitions):
        salt += 1
        say(f"repetition {i + 1}/{cfg.repetitions}")
        out = client.complete(make_prompt(pool, cfg.prompt_tokens, salt), cfg.gen_tokens)
        t = out["timings"]
        check_timings(t, cfg.prompt_tokens, cfg.gen_tokens)
        pre.append(t["prompt_per_second"])
        dec.append(t["predicted_per_second"])
    say("streamed TTFT / inter-token latency")
    ttfts, itls = [], []
    for i in range(max(1, min(3, cfg.repetitions))):
        salt += 1
        check(f"stream {i + 1}")
        ttft, gaps, _t = client.stream(make_prompt(pool, cfg.prompt_tokens, salt), cfg.gen_tokens)
        ttfts.append(ttft * 1000)
        itls.extend(g * 1000 for g in gaps)
    conc = []
    for k in cfg.concurrency:
        salt += 100
        say(f"concurrency {k}")
        conc.append(_concurrent(client, pool, cfg, k, salt))
    gs = props.get("default_generation_settings") or {}
    server = {"build_info": props.get("build_info"), "n_ctx": gs.get("n_ctx"), "total_slots": props.get("total_slots"),
              "model_path": props.get("model_path")}
    return BenchResult(cfg, server, Stats.of(pre), Stats.of(dec),
                       {"p50": _r(percentile(ttfts, 50), 3), "p90": _r(percentile(ttfts, 90), 3),
                        "p99": _r(percentile(ttfts, 99), 3), "samples": [_r(x, 3) for x in ttfts]},
                       {"p50": _r(percentile(itls, 50), 3), "p90": _r(percentile(itls, 90), 3),
                        "p99": _r(percentile(itls, 99), 3), "n": len(itls)},
                       conc, client.metrics(), time.perf_counter() - t_start)


def _concurrent(client: BenchClient, pool: Sequence[int], cfg: BenchConfig, k: int, salt: int) -> dict:
    results: list[Any] = [None] * k
    barrier = threading.Barrier(k)

    def worker(i: int) -> None:
        s = requests.Session()
        s.mount("http://", _TrackingAdapter(client._live))  # client.abort() cuts these requests too
        c = BenchClient(client.url, s, client.timeout_s, api_key=client.api_key)
        barrier.wait()
        try:
            results[i] = c.complete(make_prompt(pool, cfg.prompt_tokens, salt + i), cfg.gen_tokens)
        except Exception as e:  # noqa: BLE001 - reported in the result
            results[i] = e

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(k)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    errors = [str(r) for r in results if isinstance(r, Exception)]
    ok = [r for r in results if isinstance(r, dict)]
    gen = sum(r["timings"]["predicted_n"] for r in ok)
    prompt = sum(r["timings"]["prompt_n"] for r in ok)
    return {"concurrency": k, "wall_s": _r(wall, 3), "generated_tokens": gen, "prompt_tokens": prompt,
            "aggregate_decode_tok_s": _r(gen / wall if wall else None, 3),
            "per_request_decode_tok_s": [_r(r["timings"]["predicted_per_second"], 3) for r in ok],
            "errors": errors}
