"""Counter-based perturbations and their fused application to weights.

The update rule every replica implements (protocol SPEC.md, "Update arithmetic"),
for one tensor element v held in float32 and a sequence of terms
(key, coef, decay) applied in order::

    v <- fl32( fl32(v * decay) + fl32(coef * z(key, i)) )

(bfloat16 and float16 weights are widened exactly and rounded back after every term, so
where a pass of terms begins or ends never changes the result.)

and, for a perturbed forward, ``out = fl32(v + fl32(c * z(pkey, i)))`` written to a
separate buffer (the stored weight is untouched). Each product and sum is rounded
to float32 on its own: no fused multiply-add, so CPU, CUDA and Triton agree to the
bit. Weights of another dtype are widened to float32 exactly and rounded back to
nearest-even after the terms (float64 weights, which no swarm spec allows but tests
use for precision, work in float64).

``apply`` dispatches to the fastest exact path for the tensor: a numba kernel on
CPU float32, a Triton kernel on CUDA, and otherwise ``apply_reference`` (plain torch
integer ops, chunked so it needs at most one chunk of extra memory). Tests check
all paths against the reference bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..protocol.distributions import GAUSSIAN, RADEMACHER, gaussian_table_bytes
from ..protocol.hashing import GOLDEN_GAMMA, MASK64

REFERENCE_CHUNK = 1 << 20
MAX_TERMS_PER_PASS = 64


@dataclass(frozen=True)
class Term:
    """One sequential update of a tensor: v <- v*decay + coef*z(key)."""

    key: int
    coef: float
    decay: float = 1.0


# --- reference: torch integer ops, any device -------------------------------------------------
def _s64(x: int) -> int:
    x &= MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


_GOLDEN = _s64(GOLDEN_GAMMA)
_C1 = _s64(0xBF58476D1CE4E5B9)
_C2 = _s64(0x94D049BB133111EB)


def _lsr(x: torch.Tensor, n: int) -> torch.Tensor:
    return (x >> n) & ((1 << (64 - n)) - 1)


def stream_tensor(key: int, counters: torch.Tensor) -> torch.Tensor:
    """stream64(key, counter) for an int64 tensor of counters; int64 wraps like uint64."""
    z = (counters + 1) * _GOLDEN + _s64(key)
    z = (z ^ _lsr(z, 30)) * _C1
    z = (z ^ _lsr(z, 27)) * _C2
    return z ^ _lsr(z, 31)


_TABLES: dict[torch.device, torch.Tensor] = {}


def gaussian_table_tensor(device: torch.device | str = "cpu") -> torch.Tensor:
    device = torch.device(device)
    if device not in _TABLES:
        table = torch.frombuffer(bytearray(gaussian_table_bytes()), dtype=torch.float32)
        _TABLES[device] = table.to(device)
    return _TABLES[device]


def z_reference(dist: str, key: int, start: int, count: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """z for elements start..start+count-1 of the tensor with stream ``key`` (float32)."""
    return z_at(dist, key, torch.arange(start, start + count, dtype=torch.int64, device=device))


def z_at(dist: str, key: int, idx: torch.Tensor) -> torch.Tensor:
    """z for the elements whose global indices are in the int64 tensor ``idx`` (float32)."""
    device = idx.device
    if dist == RADEMACHER:
        bits = (stream_tensor(key, idx >> 6) >> (idx & 63)) & 1
        return (1 - 2 * bits).to(torch.float32)
    if dist == GAUSSIAN:
        lanes = (stream_tensor(key, idx >> 2) >> (16 * (idx & 3) + 4)) & 0xFFF
        return gaussian_table_tensor(device)[lanes]
    raise ValueError(f"unknown perturbation distribution {dist!r}")


def _f32(x: float, device, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(x, dtype=dtype, device=device)


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for every weight dtype a swarm spec allows; float64 weights (used by tests and
    precision experiments, never on the wire) keep float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def perturbed_rows(
    weight: torch.Tensor, rows: torch.Tensor, dist: str, key: int, scale: float, terms: Sequence[Term] = (),
    pair: bool = False,
):
    """The listed rows of a 2-D weight, with ``terms`` applied and then perturbed by scale*z,
    computed on the fly (``weight`` is not written). An embedding lookup reads only the rows
    of its input ids, so this gives the same forward as updating and perturbing every row.
    With ``pair``, returns the rows perturbed by +scale*z and by -scale*z."""
    if _cpu_fast(weight):
        return _kernels_cpu.perturbed_rows(weight, rows, dist, key, scale, terms, pair)
    width = weight.shape[1]
    idx = rows.to(torch.int64).unsqueeze(1) * width + torch.arange(width, device=weight.device)
    wd = working_dtype(weight.dtype)
    v = weight[rows].to(wd)
    for t in terms:
        v = v * _f32(t.decay, weight.device, wd)
        v = v + z_at(dist, t.key, idx).to(wd) * _f32(t.coef, weight.device, wd)
        if weight.dtype in (torch.bfloat16, torch.float16):
            v = v.to(weight.dtype).to(wd)
    delta = z_at(dist, key, idx).to(wd) * _f32(scale, weight.device, wd)
    return ((v + delta).to(weight.dtype), (v - delta).to(weight.dtype)) if pair else (v + delta).to(weight.dtype)


def apply_reference(
    flat: torch.Tensor,
    terms: Sequence[Term],
    dist: str,
    *,
    perturb: tuple[int, float] | None = None,
    out: torch.Tensor | None = None,
    offset: int = 0,
    out2: torch.Tensor | None = None,
    chunk: int = REFERENCE_CHUNK,
) -> None:
    """The update rule in plain torch ops (see module docstring). ``flat`` is 1-D."""
    dev, wd = flat.device, working_dtype(flat.dtype)
    coefs = [(t.key, _f32(t.decay, dev, wd), _f32(t.coef, dev, wd)) for t in terms]
    pert = (perturb[0], _f32(perturb[1], dev, wd)) if perturb is not None else None
    narrow = flat.dtype in (torch.bfloat16, torch.float16)  # rounded back after every term (SPEC 10.5)
    for lo in range(0, flat.numel(), chunk):
        hi = min(lo + chunk, flat.numel())
        v = flat[lo:hi].to(wd)
        for key, decay, coef in coefs:
            v = v * decay
            v = v + z_reference(dist, key, offset + lo, hi - lo, dev).to(wd) * coef
            if narrow:
                v = v.to(flat.dtype).to(wd)
        if coefs:
            flat[lo:hi] = v.to(flat.dtype)
        if pert is not None:
            delta = z_reference(dist, pert[0], offset + lo, hi - lo, dev).to(wd) * pert[1]
            out[lo:hi] = (v + delta).to(out.dtype)
            if out2 is not None:
                out2[lo:hi] = (v - delta).to(out2.dtype)


# --- dispatch ------------------------------------------------------------------------------------
def apply(
    flat: torch.Tensor,
    terms: Sequence[Term],
    dist: str,
    *,
    perturb: tuple[int, float] | None = None,
    out: torch.Tensor | None = None,
    offset: int = 0,
    out2: torch.Tensor | None = None,
) -> None:
    """Apply ``terms`` to ``flat`` in place and optionally write a perturbed copy to ``out``
    (and, given ``out2``, the oppositely perturbed copy theta - c z there).

    ``flat`` and the outputs are 1-D views; ``offset`` is the global element index of
    ``flat[0]`` within its parameter (so a chunk of a tensor gets the same z as the
    whole tensor would).
    """
    if perturb is not None and (out is None or out.numel() != flat.numel()):
        raise ValueError("a perturbed copy needs an output buffer of the same size")
    if len(terms) <= MAX_TERMS_PER_PASS:
        if terms or perturb is not None:
            _apply_pass(flat, terms, dist, perturb, out, offset, out2)
        return
    for start in range(0, len(terms), MAX_TERMS_PER_PASS):
        batch = terms[start : start + MAX_TERMS_PER_PASS]
        last = start + MAX_TERMS_PER_PASS >= len(terms)
        _apply_pass(flat, batch, dist, perturb if last else None, out, offset, out2)


_kernels_cpu = _kernels_cuda = None  # imported on first use (they import this module)
_CUDA_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _cpu_fast(t: torch.Tensor) -> bool:
    global _kernels_cpu
    if t.device.type != "cpu" or t.dtype != torch.float32 or not t.is_contiguous():
        return False
    if _kernels_cpu is None:
        from . import kernels_cpu as _kernels_cpu
    return _kernels_cpu.available()


def _cuda_fast(t: torch.Tensor) -> bool:
    global _kernels_cuda
    if t.device.type != "cuda" or t.dtype not in _CUDA_DTYPES or not t.is_contiguous():
        return False
    if _kernels_cuda is None:
        from . import kernels_cuda as _kernels_cuda
    return _kernels_cuda.available()


def _apply_pass(flat, terms, dist, perturb, out, offset, out2=None) -> None:
    if _cpu_fast(flat):
        _kernels_cpu.apply(flat, terms, dist, perturb, out, offset, out2)
    elif _cuda_fast(flat):
        _kernels_cuda.apply(flat, terms, dist, perturb, out, offset, out2)
    else:
        apply_reference(flat, terms, dist, perturb=perturb, out=out, offset=offset, out2=out2)


def term_arrays(terms: Sequence[Term]) -> tuple[list[int], list[float], list[float]]:
    return [t.key & MASK64 for t in terms], [t.coef for t in terms], [t.decay for t in terms]
