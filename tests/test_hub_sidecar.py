"""The projector llama-server's own -hf loads beside the model (common/download.cpp find_best_sibling), chosen
the same way by gpcrun so the plan holds its bytes: table tests of refs.select_sibling, pure."""
from __future__ import annotations

import pytest

from gpcrun.hub import select_sibling

FLAT = ["README.md", "m-Q4_K_M.gguf", "m-Q8_0.gguf", "m-F16.gguf", "mmproj-m-F16.gguf", "mmproj-m-Q8_0.gguf"]


@pytest.mark.parametrize("model, listing, tag, want", [
    ("m-Q4_K_M.gguf", ["m-Q4_K_M.gguf"], "", None),  # no projector in the repo
    ("m-Q8_0.gguf", FLAT, "", "mmproj-m-Q8_0.gguf"),  # closest quant bits: 8 vs 8
    ("m-Q4_K_M.gguf", FLAT, "", "mmproj-m-Q8_0.gguf"),  # |8-4| < |16-4|
    ("m-F16.gguf", FLAT, "", "mmproj-m-F16.gguf"),
    ("m-BF16.gguf", ["mmproj-m-Q8_0.gguf", "mmproj-m-BF16.gguf"], "", "mmproj-m-BF16.gguf"),
    ("m.gguf", ["mmproj-a-F16.gguf", "mmproj-b-F32.gguf"], "", "mmproj-a-F16.gguf"),  # no bits: 16 is closest to 0
    ("m-Q8_0.gguf", ["mmproj-a-Q8_0.gguf", "mmproj-b-Q8_0.gguf"], "", "mmproj-a-Q8_0.gguf"),  # a tie: the first
    # directories: the sibling's must prefix the model's, the deepest wins over closer bits
    ("q8/m-Q8_0.gguf", ["mmproj-F16.gguf", "q8/mmproj-F32.gguf"], "", "q8/mmproj-F32.gguf"),
    ("q8/m-Q8_0.gguf", ["q4/mmproj-Q8_0.gguf", "mmproj-F16.gguf"], "", "mmproj-F16.gguf"),
    ("m-Q8_0.gguf", ["sub/mmproj-Q8_0.gguf"], "", None),  # below the model's directory: never
    ("m-Q8_0.gguf", ["mmproj-Q8_0.bin", "mmproj.txt"], "", None),  # not a .gguf
    # with a tag (the mtp-/eagle3- sidecars): an exact "-TAG." beats closer bits
    ("m-Q4_K_M.gguf", ["mtp-m-Q4_0.gguf", "mtp-m-Q8_0.gguf"], "Q8_0", "mtp-m-Q8_0.gguf"),
    ("m-Q4_K_M.gguf", ["mtp-m-Q4_K_M.gguf", "mtp-m-Q4_0.gguf"], "q4_0", "mtp-m-Q4_0.gguf"),
])
def test_select_sibling_is_llama_cpps_choice(model, listing, tag, want):
    keyword = "mtp-" if tag else "mmproj"
    assert select_sibling(model, listing, keyword, tag) == want
