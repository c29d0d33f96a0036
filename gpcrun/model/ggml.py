"""The GGUF / ggml type tables every GGUF reader here shares: the full reader (reader.py), the sparse header
walk over ranged reads (sparse.py) and the KV-cache sizes (kvcache.py). One copy, taken from gguf-py's
constants (llama.cpp's gguf-py/gguf/constants.py), so the readers cannot drift apart.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Mapping


def _gguf_constants():
    # `import gguf` pulls numpy and the writer (~150 ms); constants.py alone is stdlib-only (~8 ms).
    if "gguf.constants" in sys.modules:
        return sys.modules["gguf.constants"]
    spec = importlib.util.find_spec("gguf")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the 'gguf' package is required")
    path = os.path.join(list(spec.submodule_search_locations)[0], "constants.py")
    cspec = importlib.util.spec_from_file_location("gguf.constants", path)
    mod = importlib.util.module_from_spec(cspec)
    sys.modules["gguf.constants"] = mod  # a later `import gguf` reuses it: one set of enums
    cspec.loader.exec_module(mod)
    return mod


_C = _gguf_constants()
GGML_QUANT_SIZES: Mapping[int, tuple[int, int]] = {int(k): v for k, v in _C.GGML_QUANT_SIZES.items()}
GGML_TYPE_NAMES: Mapping[int, str] = {int(t): t.name for t in _C.GGMLQuantizationType}
VALUE_TYPE_NAMES: Mapping[int, str] = {int(t): t.name for t in _C.GGUFValueType}
FILE_TYPE_NAMES: Mapping[int, str] = {int(t): t.name for t in _C.LlamaFileType}
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
