"""Fused generate-and-apply kernels for CPU float32 tensors (numba, parallel).

One memory pass applies up to 64 update terms and optionally writes a perturbed
copy, or both signs of it (theta + c z and theta - c z from one read of theta, for a
paired forward). No ``fastmath``: products and sums are rounded separately, exactly as the
reference does.

Rademacher z comes eight lanes at a time: each byte of a block's SplitMix64 word
indexes a row of ±1.0 constants (``_SIGNS``), and the 8-wide loops over those rows
are what LLVM's SLP vectoriser turns into AVX. Three details keep them vectorised:
the SLP pass must be switched on (numba leaves it off); the kernels see slices that
start on a 64-element block, so every index is a provably non-negative loop counter
(numba otherwise inserts negative-index wraparound checks); and ``_SIGNS`` is a
global, frozen into the code as a constant that the weights cannot alias.

A slice's ragged head and tail (less than a block) go through a scalar kernel, so a
call on a slice with ``offset`` gives the same bits as a call on the whole tensor.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from ..protocol.distributions import GAUSSIAN, RADEMACHER
from .perturb import Term, gaussian_table_tensor, term_arrays

try:  # numba is a hard dependency, but a broken install should degrade to the reference path
    import numba as nb
except Exception:  # pragma: no cover
    nb = None

_GOLD = np.uint64(0x9E3779B97F4A7C15)
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
# _SIGNS[byte, i] = +1.0 if bit i of byte is 0 else -1.0: eight lanes of z per byte of a hash
_SIGNS = np.array([[1.0 - 2.0 * ((byte >> i) & 1) for i in range(8)] for byte in range(256)], dtype=np.float32)
_NO_KEYS = np.zeros(0, dtype=np.uint64)
_NO_FLOATS = np.zeros(0, dtype=np.float32)


_AVAILABLE = nb is not None and os.environ.get("SEEDSWARM_DISABLE_NUMBA", "") != "1"


def available() -> bool:
    """numba imported and not disabled (SEEDSWARM_DISABLE_NUMBA=1 forces the torch reference)."""
    return _AVAILABLE


if nb is not None:
    nb.config.SLP_VECTORIZE = True  # read at compile time: must precede the first kernel
    _parallel = dict(nogil=True, cache=True, parallel=True, boundscheck=False, error_model="numpy")
    _serial = dict(nogil=True, cache=True, boundscheck=False, error_model="numpy")

    @nb.njit(inline="always")
    def _mix(z):
        z = (z ^ (z >> np.uint64(30))) * _C1
        z = (z ^ (z >> np.uint64(27))) * _C2
        return z ^ (z >> np.uint64(31))

    @nb.njit(**_parallel)
    def _rademacher_blocks(p, out, out2, keys, coefs, decays, pkey, pcoef, copies, b0):
        """Whole 64-element blocks; p[0] is element 64*b0 of the parameter. ``copies``: 0 none,
        1 out = v + c z, 2 also out2 = v - c z (both signs of a perturbation from one read)."""
        for bi in nb.prange(p.size // 64):
            base = bi * 64
            ctr = _GOLD * np.uint64(b0 + bi + 1)
            for k in range(keys.size):
                h = _mix(keys[k] + ctr)
                c = coefs[k]
                d = decays[k]
                for q in range(8):
                    row = _SIGNS[(h >> np.uint64(8 * q)) & np.uint64(255)]
                    o = base + 8 * q
                    for i in range(8):
                        p[o + i] = p[o + i] * d + c * row[i]
            if copies:
                h = _mix(pkey + ctr)
                for q in range(8):
                    row = _SIGNS[(h >> np.uint64(8 * q)) & np.uint64(255)]
                    o = base + 8 * q
                    for i in range(8):
                        out[o + i] = p[o + i] + pcoef * row[i]
                    if copies == 2:
                        for i in range(8):
                            out2[o + i] = p[o + i] - pcoef * row[i]

    @nb.njit(**_serial)
    def _rademacher_ragged(p, out, out2, keys, coefs, decays, pkey, pcoef, copies, g0):
        """Fewer than 64 elements g0..g0+len-1 inside one block (a slice's head or tail)."""
        ctr = _GOLD * np.uint64(g0 // 64 + 1)
        for k in range(keys.size):
            h = _mix(keys[k] + ctr)
            for j in range(p.size):
                bit = (h >> np.uint64((g0 + j) & 63)) & np.uint64(1)
                p[j] = p[j] * decays[k] + coefs[k] * _SIGNS[bit, 0]
        if copies:
            h = _mix(pkey + ctr)
            for j in range(p.size):
                bit = (h >> np.uint64((g0 + j) & 63)) & np.uint64(1)
                out[j] = p[j] + pcoef * _SIGNS[bit, 0]
                if copies == 2:
                    out2[j] = p[j] - pcoef * _SIGNS[bit, 0]

    @nb.njit(**_parallel)
    def _gaussian_groups(p, out, out2, keys, coefs, decays, pkey, pcoef, copies, q0, table):
        """Whole 4-element groups (one hash each); p[0] is element 4*q0 of the parameter."""
        for gi in nb.prange(p.size // 4):
            base = gi * 4
            ctr = _GOLD * np.uint64(q0 + gi + 1)
            for k in range(keys.size):
                h = _mix(keys[k] + ctr)
                c = coefs[k]
                d = decays[k]
                for i in range(4):
                    z = table[(h >> np.uint64(16 * i + 4)) & np.uint64(0xFFF)]
                    p[base + i] = p[base + i] * d + c * z
            if copies:
                h = _mix(pkey + ctr)
                for i in range(4):
                    z = table[(h >> np.uint64(16 * i + 4)) & np.uint64(0xFFF)]
                    out[base + i] = p[base + i] + pcoef * z
                    if copies == 2:
                        out2[base + i] = p[base + i] - pcoef * z

    @nb.njit(**_serial)
    def _gaussian_ragged(p, out, out2, keys, coefs, decays, pkey, pcoef, copies, g0, table):
        for k in range(keys.size):
            for j in range(p.size):
                g = g0 + j
                h = _mix(keys[k] + _GOLD * np.uint64(g // 4 + 1))
                p[j] = p[j] * decays[k] + coefs[k] * table[(h >> np.uint64(16 * (g & 3) + 4)) & np.uint64(0xFFF)]
        if copies:
            for j in range(p.size):
                g = g0 + j
                h = _mix(pkey + _GOLD * np.uint64(g // 4 + 1))
                z = table[(h >> np.uint64(16 * (g & 3) + 4)) & np.uint64(0xFFF)]
                out[j] = p[j] + pcoef * z
                if copies == 2:
                    out2[j] = p[j] - pcoef * z

    @nb.njit(**_serial)
    def _rows(w, rows, out, out2, pair, keys, coefs, decays, pkey, pcoef, gaussian, table):
        """out[i] = (w[rows[i]] with the terms applied) + pcoef * z (and out2 with -pcoef when
        ``pair``): an embedding lookup's rows, updated and perturbed on the fly; w is not written."""
        width = w.shape[1]
        for i in range(rows.size):
            r = rows[i]
            for j in range(width):
                out[i, j] = w[r, j]
            for k in range(keys.size + 1):
                last = k == keys.size
                key = pkey if last else keys[k]
                c = pcoef if last else coefs[k]
                d = np.float32(1.0) if last else decays[k]
                j = 0
                while j < width:  # one hash per block (64 Rademacher / 4 Gaussian elements)
                    g = r * width + j
                    if gaussian:
                        h = _mix(key + _GOLD * np.uint64(g // 4 + 1))
                        stop = min(width, j + 4 - (g & 3))
                    else:
                        h = _mix(key + _GOLD * np.uint64(g // 64 + 1))
                        stop = min(width, j + 64 - (g & 63))
                    while j < stop:
                        g = r * width + j
                        if gaussian:
                            z = table[(h >> np.uint64(16 * (g & 3) + 4)) & np.uint64(0xFFF)]
                        else:
                            z = _SIGNS[(h >> np.uint64(g & 63)) & np.uint64(1), 0]
                        if last:
                            if pair:
                                out2[i, j] = out[i, j] - c * z
                            out[i, j] = out[i, j] + c * z
                        else:
                            out[i, j] = out[i, j] * d + c * z
                        j += 1


def _term_arrays(terms: Sequence[Term]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not terms:
        return _NO_KEYS, _NO_FLOATS, _NO_FLOATS
    keys, coefs, decays = term_arrays(terms)
    return np.array(keys, dtype=np.uint64), np.array(coefs, dtype=np.float32), np.array(decays, dtype=np.float32)


def apply(
    flat: torch.Tensor,
    terms: Sequence[Term],
    dist: str,
    perturb: tuple[int, float] | None,
    out: torch.Tensor | None,
    offset: int,
    out2: torch.Tensor | None = None,
) -> None:
    apply_arrays(flat.numpy(), None if out is None else out.numpy(), terms, dist, perturb, offset,
                 None if out2 is None else out2.numpy())


def apply_arrays(
    p: np.ndarray, o: np.ndarray | None, terms: Sequence[Term], dist: str, perturb: tuple[int, float] | None,
    offset: int = 0, o2: np.ndarray | None = None,
) -> None:
    """``apply`` on numpy views (the engine caches them: this is its per-tensor hot path)."""
    n = p.size
    if n == 0:
        return
    copies = 0 if perturb is None else 1 if o2 is None else 2
    if o is None:
        o = p
    if o2 is None:
        o2 = o
    if dist == RADEMACHER:
        width, body, ragged, extra = 64, _rademacher_blocks, _rademacher_ragged, ()
    elif dist == GAUSSIAN:
        width, body, ragged, extra = 4, _gaussian_groups, _gaussian_ragged, (gaussian_table_tensor("cpu").numpy(),)
    else:
        raise ValueError(f"unknown perturbation distribution {dist!r}")
    common = (
        *_term_arrays(terms),
        np.uint64(perturb[0] if perturb else 0), np.float32(perturb[1] if perturb else 0.0), copies,
    )
    head = min((-offset) % width, n)
    full = (n - head) // width * width
    if head:
        ragged(p[:head], o[:head], o2[:head], *common, np.int64(offset), *extra)
    if full:
        sl = slice(head, head + full)
        body(p[sl], o[sl], o2[sl], *common, np.int64((offset + head) // width), *extra)
    if head + full < n:
        sl = slice(head + full, n)
        ragged(p[sl], o[sl], o2[sl], *common, np.int64(offset + head + full), *extra)


def perturbed_rows(
    weight: torch.Tensor, rows: torch.Tensor, dist: str, key: int, scale: float, terms: Sequence[Term] = (),
    pair: bool = False,
):
    out = torch.empty((rows.numel(), weight.shape[1]), dtype=torch.float32)
    out2 = torch.empty_like(out) if pair else out
    _rows(weight.numpy(), rows.to(torch.int64).numpy(), out.numpy(), out2.numpy(), pair, *_term_arrays(terms),
          np.uint64(key), np.float32(scale), dist == GAUSSIAN, gaussian_table_tensor("cpu").numpy())
    return (out, out2) if pair else out
