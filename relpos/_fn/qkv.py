"""q, k and v as views of one fused projection, and their gradients as one block.

``qkv_heads`` projects x with one GEMM into y (B, T, 3, H, Dh) and hands q, k,
v out as the three thirds of y in the head layout, ``y[:, :, g].transpose(0, 2,
1, 3)``: views, not copies. The fused attention reads such views where they
are, and its backward can write dq, dk, dv into one new (B, T, 3, H, Dh) block
(``packed_grads``), which is then, as it stands, the gradient of y: no head
split in the forward and no head merge in the backward.

This module holds the two tests that make that safe, by identity, not by
comparing addresses (which costs NumPy ~10 us an array):

- :func:`qkv_views` records each triple it makes (weakly: the record goes with
  the arrays); :func:`qkv_block` (forward) says whether q, k, v are such a
  triple, unchanged. Only then does attention ask for packed gradients.
- :func:`packed_grad_block` (backward) says whether dq, dk, dv are a triple
  made with ``owned=True``: from a block that attention's backward made and
  handed out only as that triple. Only such a block is the caller's to turn in
  place (RoPE's inverse rotation): any other might be memory its maker still uses.
"""
from __future__ import annotations

import weakref

__all__ = ["qkv_views", "qkv_block", "packed_grad_block"]

# id(q) -> (ref q, ref k, ref v, owned) for the triples qkv_views made; an entry
# leaves with its q (the callback runs when q is freed, before its id can be reused)
_TRIPLES = {}


def _drop(key):
    return lambda _ref: _TRIPLES.pop(key, None)


def qkv_views(y, B, T, H, Dh, owned=False):
    """q, k, v (B, H, T, Dh) each: views of y, any C-contiguous array of B*T*3*H*Dh float32,
    recorded as a triple (owned: y was made for them and is referenced nowhere else)."""
    y5 = y.reshape(B, T, 3, H, Dh)
    q, k, v = (y5[:, :, g].transpose(0, 2, 1, 3) for g in range(3))
    key = id(q)
    _TRIPLES[key] = (weakref.ref(q, _drop(key)), weakref.ref(k), weakref.ref(v), owned)
    return q, k, v


def _triple(q, k, v):
    """The record of (q, k, v) when qkv_views made exactly this triple and none of the
    three has been reshaped or restrided since (ndarray.shape / .strides can be set), else None."""
    e = _TRIPLES.get(id(q))
    if e is None or e[0]() is not q or e[1]() is not k or e[2]() is not v:
        return None
    st = q.strides
    if k.shape != q.shape or v.shape != q.shape or k.strides != st or v.strides != st or q.ndim != 4:
        return None
    B, H, T, Dh = q.shape
    it = q.itemsize
    if st != (T * 3 * H * Dh * it, Dh * it, 3 * H * Dh * it, it) or q.base is None:
        return None
    return e


def qkv_block(q, k, v):
    """The C-contiguous block whose thirds q, k, v are (as qkv_views made them), or None."""
    return q.base if _triple(q, k, v) is not None else None


def packed_grad_block(dq, dk, dv):
    """The block whose thirds dq, dk, dv are, when qkv_views made them with owned=True, or None."""
    if dq is None or dk is None or dv is None:
        return None
    e = _triple(dq, dk, dv)
    return dq.base if e is not None and e[3] else None
