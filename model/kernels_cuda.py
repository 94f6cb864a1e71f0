"""The fused generate-and-apply kernel for CUDA tensors (Triton).

Same arithmetic as the reference and the CPU kernel: every element recomputes
its SplitMix64 word from (key, global index) with 64-bit integer ops, products
and sums rounded separately (``enable_fp_fusion=False`` forbids FMA contraction),
float32 working precision, round-to-nearest-even back to the weight dtype.

Tests run this kernel on CPU tensors through Triton's interpreter
(``TRITON_INTERPRET=1``), so its bit-exactness is checked on machines without a GPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from ..protocol.distributions import GAUSSIAN, RADEMACHER
from .perturb import Term, gaussian_table_tensor, term_arrays

try:
    import triton
    import triton.language as tl
except Exception:  # triton is optional: without it CUDA tensors use the torch reference path
    triton = None

BLOCK = 1024


_AVAILABLE = triton is not None and os.environ.get("SEEDSWARM_DISABLE_TRITON", "") != "1"


def available() -> bool:
    """triton imported and not disabled (SEEDSWARM_DISABLE_TRITON=1 forces the torch reference)."""
    return _AVAILABLE


if triton is not None:

    @triton.jit
    def _mix(z):
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB
        return z ^ (z >> 31)

    @triton.jit
    def _z(key, g, table_ptr, GAUSS: tl.constexpr):
        if GAUSS:
            h = _mix(key + ((g >> 2) + 1) * 0x9E3779B97F4A7C15)
            lane = (h >> (16 * (g & 3) + 4)) & 0xFFF
            z = tl.load(table_ptr + lane.to(tl.int32))
        else:
            h = _mix(key + ((g >> 6) + 1) * 0x9E3779B97F4A7C15)
            bit = (h >> (g & 63)) & 1
            z = 1.0 - 2.0 * bit.to(tl.float32)
        return z

    @triton.jit
    def _store(ptr, idx, v, mask):
        """Store float32 v into ptr's dtype rounding to nearest-even (explicit for bfloat16,
        whose conversion rounding Triton's interpreter and some versions don't guarantee)."""
        if ptr.dtype.element_ty == tl.bfloat16:
            bits = v.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            tl.store(ptr.to(tl.pointer_type(tl.uint16)) + idx, bits.to(tl.uint16), mask=mask)
        else:
            tl.store(ptr + idx, v.to(ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _round16(v, BF16: tl.constexpr):
        """v rounded to bfloat16 (BF16) or float16 and widened back to float32, exactly."""
        if BF16:
            bits = v.to(tl.uint32, bitcast=True)
            bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
            return bits.to(tl.float32, bitcast=True)
        return v.to(tl.float16).to(tl.float32)

    @triton.jit
    def _apply_kernel(
        p_ptr, out_ptr, out2_ptr, keys_ptr, coefs_ptr, decays_ptr, table_ptr, n_terms, n, offset,
        PERTURB: tl.constexpr, PAIR: tl.constexpr, GAUSS: tl.constexpr, BLOCK_SIZE: tl.constexpr,
        NARROW: tl.constexpr, BF16: tl.constexpr,
    ):
        pid = tl.program_id(0)
        idx = pid.to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        mask = idx < n
        g = (idx + offset).to(tl.uint64)
        v = tl.load(p_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        for k in range(n_terms):
            key = tl.load(keys_ptr + k).to(tl.uint64, bitcast=True)
            c = tl.load(coefs_ptr + k)
            d = tl.load(decays_ptr + k)
            z = _z(key, g, table_ptr, GAUSS)
            v = v * d
            v = v + c * z
            if NARROW:  # 16-bit weights are rounded back after every term (SPEC 10.5)
                v = _round16(v, BF16)
        if n_terms > 0:
            _store(p_ptr, idx, v, mask)
        if PERTURB:
            key = tl.load(keys_ptr + n_terms).to(tl.uint64, bitcast=True)
            c = tl.load(coefs_ptr + n_terms)
            z = _z(key, g, table_ptr, GAUSS)
            _store(out_ptr, idx, v + c * z, mask)
            if PAIR:
                _store(out2_ptr, idx, v - c * z, mask)


def _signed(key: int) -> int:
    return key - (1 << 64) if key >= 1 << 63 else key


def apply(
    flat: torch.Tensor,
    terms: Sequence[Term],
    dist: str,
    perturb: tuple[int, float] | None,
    out: torch.Tensor | None,
    offset: int,
    out2: torch.Tensor | None = None,
) -> None:
    n = flat.numel()
    if n == 0:
        return
    if dist not in (RADEMACHER, GAUSSIAN):
        raise ValueError(f"unknown perturbation distribution {dist!r}")
    keys, coefs, decays = term_arrays(terms)
    if perturb is not None:
        keys, coefs, decays = keys + [perturb[0]], coefs + [perturb[1]], decays + [1.0]
    dev = flat.device
    keys_t = torch.tensor([_signed(k) for k in keys] or [0], dtype=torch.int64, device=dev)
    coefs_t = torch.tensor(coefs or [0.0], dtype=torch.float32, device=dev)
    decays_t = torch.tensor(decays or [1.0], dtype=torch.float32, device=dev)
    table = gaussian_table_tensor(dev)
    grid = (triton.cdiv(n, BLOCK),)
    _apply_kernel[grid](
        flat, out if out is not None else flat, out2 if out2 is not None else flat, keys_t, coefs_t, decays_t, table,
        len(terms), n, offset, PERTURB=perturb is not None, PAIR=out2 is not None, GAUSS=dist == GAUSSIAN,
        BLOCK_SIZE=BLOCK, NARROW=flat.dtype != torch.float32, BF16=flat.dtype == torch.bfloat16,
        enable_fp_fusion=False,
    )
