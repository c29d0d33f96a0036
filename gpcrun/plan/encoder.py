"""A projector's encoder compute buffer (pure): llama.cpp's graph allocator replayed on the projector's graph.

mtmd reserves the vision encoder's compute buffer once, at load, for a warm-up image of clip.vision.image_size
squared (tools/mtmd/clip.cpp get_dummy_batch / reserve_compute_meta; printed as "CPU compute buffer size").
Its size is the peak of ggml-alloc.c's gallocr over the graph's nodes: inputs are placed first, a node reuses
its only-consumer source in place for ADD/MUL/UNARY/SCALE/SOFT_MAX (ggml_op_can_inplace), freed blocks go to a
best-fit free list that merges neighbours, and the tail grows last (ggml_dyn_tallocr_alloc/free_tensor).

Replayed here for the LLaVA-1.5 graph (clip.projector_type "mlp", tools/mtmd/models/llava.cpp): conv2d patch
embedding (build_inp, im2col is F16 whatever the weights, ggml.c ggml_conv_2d), the class token, position rows,
pre-norm, layers 0..n_layer-2 (the second-to-last layer is LLaVA's feature layer), attention with Q, K, V all
computed first (clip.cpp build_attn: flash attention casts K and V to F16; without it a KQ matrix of
n_head x n_pos^2 f32), the FFN, then get_rows(patches) -> mm.0 -> GELU -> mm.2. Measured against llama-server's
own allocation on 8 generated projectors (tests/mmproj_factory.py): equal to the byte. Other projector types
have other graphs: their compute is None with the reason, never a guess.
"""
from __future__ import annotations

_INPLACE = frozenset(("ADD", "MUL", "UNARY", "SCALE", "SOFT_MAX"))  # ggml-alloc.c ggml_op_can_inplace


class _T:
    __slots__ = ("op", "size", "srcs", "view_src", "children", "views", "allocated", "addr", "external")

    def __init__(self, op: str, size: int, srcs=(), view_src=None, external: bool = False) -> None:
        self.op, self.size, self.srcs, self.view_src, self.external = op, size, list(srcs), view_src, external
        self.children = self.views = 0
        self.allocated = False
        self.addr = 0


class _Tallocr:
    """ggml_dyn_tallocr: a best-fit free list (the last block is the growing tail), merging freed neighbours."""

    def __init__(self, alignment: int) -> None:
        self.align = alignment
        self.blocks: list[list[int]] = [[0, 1 << 62]]
        self.max_size = 0

    def _pad(self, n: int) -> int:
        return (n + self.align - 1) // self.align * self.align

    def alloc(self, size: int) -> int:
        size = self._pad(size)
        best = None
        for i, (_, free) in enumerate(self.blocks[:-1]):
            if free >= size and (best is None or free <= self.blocks[best][1]):
                best = i
        if best is None:
            best = len(self.blocks) - 1
        addr = self.blocks[best][0]
        self.blocks[best][0] += size
        self.blocks[best][1] -= size
        if self.blocks[best][1] == 0:
            del self.blocks[best]
        self.max_size = max(self.max_size, addr + size)
        return addr

    def free(self, addr: int, size: int) -> None:
        size, b = self._pad(size), self.blocks
        for i, (off, n) in enumerate(b):
            if off + n == addr:
                b[i][1] += size
                if i + 1 < len(b) and b[i][0] + b[i][1] == b[i + 1][0]:
                    b[i][1] += b[i + 1][1]
                    del b[i + 1]
                return
            if addr + size == off:
                b[i][0], b[i][1] = addr, n + size
                if i > 0 and b[i - 1][0] + b[i - 1][1] == b[i][0]:
                    b[i - 1][1] += b[i][1]
                    del b[i]
                return
        b.append([addr, size])
        b.sort()


def _llava_graph(n_patches: int, patch: int, n_embd: int, n_ff: int, n_head: int, n_layer_run: int,
                 mm0_out: int, mm2_out: int, flash: bool) -> tuple[list[_T], list[_T]]:
    """(input leafs, nodes in graph order) of clip_graph_llava::build for one warm-up image (f32 activations)."""
    n_pos, pix = n_patches + 1, n_patches * patch * patch
    weight = lambda: _T("NONE", 0, external=True)  # noqa: E731 - weights live in the model buffer
    inp_raw, positions, patches = _T("NONE", 12 * pix), _T("NONE", 4 * n_pos), _T("NONE", 4 * n_patches)
    nodes: list[_T] = []

    def node(op: str, size: int, *srcs: _T) -> _T:
        nodes.append(_T(op, size, srcs))
        return nodes[-1]

    def view(src: _T) -> _T:
        nodes.append(_T("VIEW", 0, (src,), src.view_src or src))
        return nodes[-1]

    def norm(x: _T) -> _T:  # build_norm: NORM, then MUL by the weight and ADD the bias (both in place)
        y = node("NORM", 4 * n_pos * n_embd, x)
        return node("ADD", y.size, node("MUL", y.size, y, weight()), weight())

    act = lambda width: 4 * n_pos * width  # noqa: E731
    x = node("IM2COL", 6 * pix, weight(), inp_raw)  # F16 patches (ggml_conv_2d)
    x = node("MUL_MAT", 4 * n_patches * n_embd, view(x), weight())
    x = node("CONT", 4 * n_patches * n_embd, view(view(x)))
    x = node("CONT", 4 * n_patches * n_embd, view(view(x)))
    x = node("CONCAT", act(n_embd), x, weight())  # + class token
    x = node("ADD", act(n_embd), x, node("GET_ROWS", act(n_embd), weight(), positions))
    inp = norm(x)  # pre_ln
    for _ in range(n_layer_run):
        cur = norm(inp)
        q, k, v = (view(node("ADD", act(n_embd), node("MUL_MAT", act(n_embd), weight(), cur), weight()))
                   for _ in "qkv")
        if flash:
            qp, kp = view(q), view(k)
            k16 = node("CPY", 2 * n_pos * n_embd, kp)
            v16 = node("CPY", 2 * n_pos * n_embd, view(v))
            o = view(node("FLASH_ATTN_EXT", act(n_embd), qp, k16, v16))
        else:
            qp, kp, vp = view(q), view(k), view(v)
            vc = node("CONT", act(n_embd), vp)
            kq = node("SOFT_MAX", 4 * n_pos * n_pos * n_head, node("MUL_MAT", 4 * n_pos * n_pos * n_head, kp, qp))
            o = node("CONT", act(n_embd), view(node("MUL_MAT", act(n_embd), vc, kq)))
        o = node("ADD", act(n_embd), node("MUL_MAT", act(n_embd), weight(), o), weight())
        inp = node("ADD", act(n_embd), o, inp)
        cur = norm(inp)
        u = node("ADD", act(n_ff), node("MUL_MAT", act(n_ff), weight(), cur), weight())
        u = node("UNARY", act(n_ff), u)
        d = node("ADD", act(n_embd), node("MUL_MAT", act(n_embd), weight(), u), weight())
        inp = node("ADD", act(n_embd), inp, d)
    e = node("GET_ROWS", 4 * n_patches * n_embd, view(inp), patches)
    e = node("UNARY", 4 * n_patches * mm0_out,
             node("ADD", 4 * n_patches * mm0_out, node("MUL_MAT", 4 * n_patches * mm0_out, weight(), e), weight()))
    node("ADD", 4 * n_patches * mm2_out, node("MUL_MAT", 4 * n_patches * mm2_out, weight(), e), weight())
    return [inp_raw, positions, patches], nodes


def _peak(leafs: list[_T], nodes: list[_T], alignment: int) -> int:
    """ggml_gallocr_alloc_graph_impl's walk: leafs first, then each node after its sources, freeing a source when
    its last consumer (and its last view) is done."""
    a = _Tallocr(alignment)

    def allocate(t: _T) -> None:
        if t.external or t.allocated or t.view_src is not None:
            return
        t.allocated = True
        if t.op in _INPLACE:
            for s in t.srcs:
                if s.external or s.view_src is not None or not s.allocated or s.size != t.size:
                    continue
                if s.children == 1 and s.views == 0:
                    t.addr, s.allocated = s.addr, False
                    return
        t.addr = a.alloc(t.size)

    for t in leafs:
        allocate(t)
    for t in nodes:
        if t.view_src is not None:
            t.view_src.views += 1
        for s in t.srcs:
            s.children += 1
    for t in nodes:
        for s in t.srcs:
            allocate(s)
        allocate(t)
        for s in t.srcs:
            s.children -= 1
            if s.children or s.views:
                continue
            if s.view_src is not None:
                v = s.view_src
                v.views -= 1
                if v.views == 0 and v.children == 0 and v.allocated:
                    a.free(v.addr, v.size)
                    v.allocated = False
            elif s.allocated:
                a.free(s.addr, s.size)
                s.allocated = False
    return a.max_size


def projector_compute_bytes(info, *, flash: bool = True, alignment: int = 32) -> tuple[int | None, str]:
    """(the encoder's compute buffer in bytes, a note): None with the reason for graphs not replayed here.
    alignment: the backend buffer's (CPU 32, ggml-impl.h TENSOR_ALIGNMENT; CUDA 128, ggml-cuda.cu)."""
    ptype = info.value("clip.projector_type")
    if not info.value("clip.has_vision_encoder"):
        return None, "encoder compute not estimated: no vision encoder in this projector (audio only?)"
    if ptype != "mlp":
        return None, f"encoder compute not estimated for projector type {ptype!r} (replayed: 'mlp')"
    tensors = {t.name: t for t in info.tensors}
    need = ("v.class_embd", "v.patch_embd.weight", "mm.0.weight", "mm.2.weight")
    if any(n not in tensors for n in need) or info.value("clip.vision.feature_layer") is not None:
        return None, "encoder compute not estimated: an 'mlp' projector without the LLaVA-1.5 layout"
    g = lambda k: info.value("clip.vision." + k)  # noqa: E731
    image, patch = int(g("image_size") or 0), int(g("patch_size") or 0)
    n_layer = int(g("block_count") or 0)
    if not image or not patch:
        return None, "encoder compute not estimated: no clip.vision.image_size/patch_size"
    n_patches = (image // patch) ** 2
    leafs, nodes = _llava_graph(n_patches, patch, int(g("embedding_length")), int(g("feed_forward_length")),
                                int(g("attention.head_count")), max(n_layer - 1, 0),
                                tensors["mm.0.weight"].shape[1], tensors["mm.2.weight"].shape[1], flash)
    note = f"encoder compute for a {image}x{image} warm-up image ({n_patches} patches" + \
           (", flash attention)" if flash else ", no flash attention)")
    return _peak(leafs, nodes, alignment), note
