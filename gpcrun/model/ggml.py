"""The GGUF / ggml type tables every GGUF reader here shares: the full reader (reader.py), the sparse header
walk over ranged reads (sparse.py) and the KV-cache sizes (kvcache.py). One copy, taken from gguf-py's
constants (llama.cpp's gguf-py/gguf/constants.py), so the readers cannot drift apart.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from typing import Mapping

from ..paths import cache_dir


def _constants_path() -> str:
    spec = importlib.util.find_spec("gguf")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the 'gguf' package is required")
    return os.path.join(list(spec.submodule_search_locations)[0], "constants.py")


def _gguf_constants(path: str):
    # `import gguf` pulls numpy and the writer (~150 ms); constants.py alone is stdlib-only (~8 ms).
    if "gguf.constants" in sys.modules:
        return sys.modules["gguf.constants"]
    cspec = importlib.util.spec_from_file_location("gguf.constants", path)
    mod = importlib.util.module_from_spec(cspec)
    sys.modules["gguf.constants"] = mod  # a later `import gguf` reuses it: one set of enums
    cspec.loader.exec_module(mod)
    return mod


_TABLES = ("quant_sizes", "type_names", "value_type_names", "file_type_names")


def _tables_from(c) -> dict:
    return {"quant_sizes": {int(k): list(v) for k, v in c.GGML_QUANT_SIZES.items()},
            "type_names": {int(t): t.name for t in c.GGMLQuantizationType},
            "value_type_names": {int(t): t.name for t in c.GGUFValueType},
            "file_type_names": {int(t): t.name for t in c.LlamaFileType}}


def _load_tables() -> dict:
    """The four tables below, read from gguf-py's constants.py; executing it (its enums) costs ~12 ms at every
    start, so the tables are kept in the cache keyed by the sha256 of that file's bytes (~0.3 ms to hash): an
    edited or upgraded gguf-py is read again. A cache that cannot be read or written is no cache."""
    path = _constants_path()
    with open(path, "rb") as f:
        cached = cache_dir() / "gguf-tables" / f"{hashlib.sha256(f.read()).hexdigest()[:32]}.json"
    try:
        with open(cached, encoding="utf-8") as f:
            doc = json.load(f)
        return {name: {int(k): (tuple(v) if isinstance(v, list) else v) for k, v in doc[name].items()}
                for name in _TABLES}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    tables = _tables_from(_gguf_constants(path))
    try:
        from ..atomic import write_text_atomic
        cached.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cached, json.dumps(tables), durable=False)
    except OSError:
        pass
    return {name: {k: (tuple(v) if isinstance(v, list) else v) for k, v in t.items()} for name, t in tables.items()}


_T = _load_tables()
GGML_QUANT_SIZES: Mapping[int, tuple[int, int]] = _T["quant_sizes"]
GGML_TYPE_NAMES: Mapping[int, str] = _T["type_names"]
VALUE_TYPE_NAMES: Mapping[int, str] = _T["value_type_names"]
FILE_TYPE_NAMES: Mapping[int, str] = _T["file_type_names"]
GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
GGML_MAX_DIMS = 4
INT64_MAX = (1 << 63) - 1

# value type -> (struct code, byte size) for fixed-size GGUF values
SCALAR_FORMATS: Mapping[int, tuple[str, int]] = {
    0: ("B", 1), 1: ("b", 1), 2: ("H", 2), 3: ("h", 2), 4: ("I", 4), 5: ("i", 4), 6: ("f", 4),
    7: ("?", 1), 10: ("Q", 8), 11: ("q", 8), 12: ("d", 8)}
# value type -> byte size, fixed-size values only
FIXED_SIZES: Mapping[int, int] = {t: size for t, (_, size) in SCALAR_FORMATS.items()}
GGUF_STRING, GGUF_ARRAY = 8, 9  # the variable-size value types
