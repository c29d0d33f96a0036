"""The GGUF string-array skip cache (gpcrun/model/skip_cache.py): a second read of the same file jumps over the
vocabulary; a file rewritten in place to the same size and mtime is walked again (the bytes are hashed)."""
from __future__ import annotations

import os

from gguf import GGUFValueType as V

from gpcrun.model import load_model
from tests.gguf_factory import KV, llama_kvs, write_gguf


def _write(path, words, tail: str) -> None:
    kvs = llama_kvs() + [KV("tokenizer.ggml.tokens", V.ARRAY, words, V.STRING), KV("zz.tail", V.STRING, tail)]
    write_gguf(path, kvs)


def test_a_rewrite_in_place_with_the_same_size_and_mtime_is_walked_again(tmp_path, monkeypatch):
    monkeypatch.setenv("GPCRUN_CACHE", str(tmp_path / "cache"))
    p = tmp_path / "m.gguf"
    words = ["aa"] * 3000
    _write(p, words, "xxxx")
    st = os.stat(p)
    assert load_model(str(p)).metadata["zz.tail"].value == "xxxx"
    assert list((tmp_path / "cache" / "gguf-skips").glob("*.json"))  # remembered
    assert load_model(str(p)).metadata["zz.tail"].value == "xxxx"  # from the cache
    # one string a byte longer, the tail a byte shorter: same size; same inode, mtime set back
    data = bytearray(p.read_bytes())
    _write(tmp_path / "n.gguf", ["aaa"] + words[1:], "xxx")
    new = (tmp_path / "n.gguf").read_bytes()
    assert len(new) == len(data)
    with open(p, "r+b") as f:
        f.write(new)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(p).st_ino == st.st_ino and os.stat(p).st_mtime_ns == st.st_mtime_ns
    assert load_model(str(p)).metadata["zz.tail"].value == "xxx"
