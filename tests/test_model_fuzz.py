"""Fuzzing gpcrun.model: mutated valid GGUF files either load or raise GGUFError / ModelFileError, fast and in
bounded memory; and the numpy string skipper always agrees with the plain loop."""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from gguf import GGMLQuantizationType as Q, GGUFValueType as V

from tests.gguf_factory import KV, T, quant_bytes, small_valid_bytes, write_gguf
from gpcrun import model as M
from gpcrun.cli.inspect_cmd import render_text
from gpcrun.errors import GGUFError, ModelFileError

TMP = Path(tempfile.mkdtemp(prefix="gpcrun-fuzz-"))
atexit.register(shutil.rmtree, TMP, True)
CRASH_DIR = Path(tempfile.gettempdir()) / "gpcrun-fuzz-crashes"  # kept: copy finds into tests/data/nasty/
SCALE = int(os.environ.get("GPCRUN_FUZZ_SCALE", "1"))  # longer local runs: GPCRUN_FUZZ_SCALE=50
SETTINGS = dict(deadline=2000, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _bases() -> list[bytes]:
    small = small_valid_bytes(TMP)
    # >= 2048 strings: the numpy path, with runs broken by empty, zero-filled and 256+ byte strings
    vocab = [b"" if i % 97 == 0 else b"\x00" * 9 if i % 101 == 0 else b"L" * 300 if i % 499 == 0
             else f"tok{i}".encode() for i in range(2300)]
    fast = write_gguf(TMP / "fast.gguf",
                      [KV("llama.block_count", V.UINT32, 2),
                       KV("llama.attention.head_count_kv", V.ARRAY, [2, 0], V.INT32),
                       KV("llama.attention.sliding_window", V.UINT32, 8),
                       KV("llama.attention.sliding_window_pattern", V.ARRAY, [True, False], V.BOOL),
                       KV("tokenizer.ggml.tokens", V.ARRAY, vocab, V.STRING), KV("t.after", V.UINT64, 5)],
                      [T("blk.0.attn_q.weight", quant_bytes(Q.Q4_0, (2, 32)), Q.Q4_0),
                       T("output.weight", np.ones((2, 4), dtype=np.float16))])[0].read_bytes()
    big = write_gguf(TMP / "be.gguf", [KV("llama.block_count", V.UINT32, 1), KV("a", V.ARRAY, ["x", ""], V.STRING)],
                     [T("w", np.ones(8, dtype=np.float32))], big_endian=True)[0].read_bytes()
    return [small, fast, big]


BASES = _bases()
HUGE = [2**64 - 1, 2**63, 2**63 - 1, 2**60, 2**40, 2**32, 2**32 - 1, 65536, 65535, 4096, 1025, 1024, 7, 1, 0]


class Hang(Exception):
    pass


@contextmanager
def bounded(seconds: float = 5.0, extra_bytes: int = 1 << 30):
    """Fail instead of hanging, and turn a runaway allocation into a MemoryError (which fails the test)."""
    def on_alarm(*_):
        raise Hang(f"load_model ran over {seconds} s")

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
    old_limit = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm + extra_bytes, old_limit[1]))
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.5)  # repeats: a raise inside a gc callback is swallowed
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        resource.setrlimit(resource.RLIMIT_AS, old_limit)


def check_file(data: bytes) -> None:
    p = TMP / "case.gguf"
    p.write_bytes(data)
    try:
        with bounded():
            try:
                info = M.load_model(p)
            except (GGUFError, ModelFileError) as e:
                assert str(e).startswith(f"{p}: ") and "\n" not in str(e)
                return
            json.dumps(info.to_json())  # what `gpcrun inspect --json` does next
            render_text(info, "q8_0", True)
    except BaseException:
        CRASH_DIR.mkdir(exist_ok=True)
        keep = CRASH_DIR / f"crash_{hashlib.sha256(data).hexdigest()[:16]}.gguf"
        keep.write_bytes(data)
        print(f"failing input saved to {keep}")
        raise


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "trunc", "u64", "u32", "insert", "delete", "splice"]))
        hi = max(len(data), 1)
        # mostly the header (the first 2 KiB), sometimes anywhere: string arrays sit further in
        at = draw(st.one_of(st.integers(0, min(hi, 2048)), st.integers(0, hi)))
        if op == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "trunc":
            del data[at:]
        elif op in ("u64", "u32"):
            size = 8 if op == "u64" else 4
            v = draw(st.one_of(st.sampled_from(HUGE), st.integers(0, 2**64 - 1), st.just(len(data))))
            data[at:at + size] = struct.pack("<Q", v % 2**64)[:size]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=24))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif op == "splice":
            src = draw(st.sampled_from(BASES))
            s = draw(st.integers(0, len(src) - 1))
            data[at:at + draw(st.integers(0, 64))] = src[s:s + draw(st.integers(1, 256))]
    return bytes(data)


def test_bases_are_valid():
    for b in BASES:
        check_file(b)
        p = TMP / "case.gguf"
        assert M.load_model(p).shards[0].reconciled


@pytest.mark.slow  # thousands of examples: the full suite runs them, the fast loop does not
@settings(max_examples=5000 * SCALE, **SETTINGS)
@given(mutated())
def test_fuzz_mutations(data):
    check_file(data)


@pytest.mark.slow  # thousands of examples: the full suite runs them, the fast loop does not
@settings(max_examples=1500 * SCALE, **SETTINGS)
@given(base=st.integers(0, len(BASES) - 1), at=st.integers(24, 1 << 16), value=st.sampled_from(HUGE),
       size=st.sampled_from([4, 8]))
def test_fuzz_counts(base, at, value, size):
    # overwrite one count/length/type field with an absurd value: every field start is hit eventually
    data = bytearray(BASES[base])
    at %= len(data)
    bo = ">" if base == 2 else "<"
    data[at:at + size] = struct.pack(bo + ("Q" if size == 8 else "I"), value % (1 << (8 * size)))
    check_file(bytes(data))


# ------------------------------------------------------------------------------------------- skipper differential

def _make_strings(rng: random.Random, n: int, style: str, n_long: int) -> list[bytes]:
    out = []
    for _ in range(n):
        r = rng.random()
        if style == "zeros":  # many false candidates: zero runs read as small lengths
            s = b"\x00" * rng.choice((0, 0, 1, 5, 6, 7, 8, 9, 16, 23))
        elif style == "lengths":  # strings made of plausible u64 lengths that point at each other
            s = b"".join(struct.pack("<Q", rng.choice((0, 1, 8, 16, 24, rng.randrange(64))))
                         for _ in range(rng.randrange(4)))[: rng.randrange(40)]
        elif style == "empty":
            s = b"" if r < 0.9 else b"x"
        elif style == "longish":  # 256+ bytes: not candidates, stepped over one by one
            s = bytes([rng.randrange(256)]) * (rng.choice((255, 256, 257, 300, 1000)) if r < 0.2 else rng.randrange(12))
        elif style == "grow":  # later strings longer than the probed first 256: the window falls short
            s = b"g" * (len(out) // 40)
        elif style == "shrink":  # first strings long: the window overshoots into what follows
            s = b"s" * (200 if len(out) < 300 else rng.randrange(4))
        else:
            s = bytes(rng.randrange(256) if rng.random() < 0.5 else 0 for _ in range(rng.choice((0, 1, 2, 3, 9, 30))))
        out.append(s)
    for _ in range(n_long):  # >= 64 KiB: not candidates, force rescans
        out[rng.randrange(n)] = bytes([rng.choice((0, 1, 255))]) * rng.choice((65535, 65536, 65537, 70000))
    return out


@pytest.mark.slow  # thousands of examples: the full suite runs them, the fast loop does not
@settings(max_examples=1500 * SCALE, **SETTINGS)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(512, 6000),
       style=st.sampled_from(["zeros", "lengths", "empty", "mixed", "longish", "grow", "shrink"]),
       n_long=st.sampled_from([0, 0, 0, 1, 3]),
       explicit=st.lists(st.binary(max_size=40), max_size=8), lead=st.integers(0, 24),
       take=st.one_of(st.just(1.0), st.floats(0.0, 1.0)), cut=st.sampled_from([None, None, 1, 7, 8, 9, 100, 5000]),
       tail=st.sampled_from([b"", b"\x00" * 64, b"\xff" * 9]))
def test_skip_fast_equals_py(seed, n, style, n_long, explicit, lead, take, cut, tail):
    rng = random.Random(seed)
    strings = _make_strings(rng, n, style, n_long)
    for s in explicit:
        strings[rng.randrange(n)] = s
    buf = b"\x07" * lead + b"".join(struct.pack("<Q", len(s)) + s for s in strings) + tail
    count = max(256, int(n * take))
    end = len(buf) if cut is None else max(lead, len(buf) - len(tail) - cut)  # cut: end falls inside the array
    u64 = struct.Struct("<Q").unpack_from

    def run(f):
        try:
            return f(buf, lead, count, end, "x", u64)
        except GGUFError as e:
            return ("error", e.path)

    want = run(M._skip_strings_py)
    assert run(M._skip_strings_fast) == want
    if cut is None and count == n:
        assert want == len(buf) - len(tail)
