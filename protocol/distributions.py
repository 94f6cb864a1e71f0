"""The perturbation z of every element, as a pure function of (key, element index).

Two distributions, both exact on every device because they use only integer
hashing and (for the Gaussian) a table lookup; no transcendental function is
evaluated at run time.

- ``rademacher``: element ``i`` reads bit ``i mod 64`` of ``stream64(key, i // 64)``;
  z = +1 for a 0 bit and -1 for a 1 bit. One hash per 64 elements.
- ``gaussian``: element ``i`` reads 16-bit lane ``i mod 4`` of ``stream64(key, i // 4)``;
  bits 4..15 of the lane index ``GAUSSIAN_TABLE`` (4096 float32 quantiles of
  N(0, 1), normalised to unit variance, symmetric). One hash per 4 elements.

Because element ``i`` depends only on ``(key, i)``, z is independent of the
order in which tensors or chunks are visited and of how a tensor is split.
"""

from __future__ import annotations

import hashlib
import math
import statistics
import struct
from functools import lru_cache
from importlib import resources

from .hashing import stream64

RADEMACHER = "rademacher"
GAUSSIAN = "gaussian"
DISTRIBUTIONS = (RADEMACHER, GAUSSIAN)

GAUSSIAN_TABLE_SIZE = 4096
#: SHA-256 of the little-endian float32 bytes of GAUSSIAN_TABLE (normative).
GAUSSIAN_TABLE_SHA256 = "87d2297bd6f503ad9b582cb87a6d8d21e20633747144ac688b90f4efcde6a2e8"
_TABLE_FILE = "gaussian4096.f32"


def build_gaussian_table() -> bytes:
    """Regenerate the table: midpoint quantiles of N(0,1), scaled to unit variance, as float32.

    Kept for documentation and reimplementation; the shipped file is normative and
    checked against ``GAUSSIAN_TABLE_SHA256``.
    """
    half = GAUSSIAN_TABLE_SIZE // 2
    normal = statistics.NormalDist()
    upper = [normal.inv_cdf((half + k + 0.5) / GAUSSIAN_TABLE_SIZE) for k in range(half)]
    scale = 1.0 / math.sqrt(math.fsum(q * q for q in upper) / half)
    upper = [q * scale for q in upper]
    values = [-q for q in reversed(upper)] + upper
    return struct.pack(f"<{GAUSSIAN_TABLE_SIZE}f", *values)


@lru_cache(maxsize=1)
def gaussian_table_bytes() -> bytes:
    data = resources.files(__package__).joinpath(_TABLE_FILE).read_bytes()
    if hashlib.sha256(data).hexdigest() != GAUSSIAN_TABLE_SHA256:
        raise RuntimeError(f"{_TABLE_FILE} is corrupt: its SHA-256 does not match the protocol")
    return data


@lru_cache(maxsize=1)
def gaussian_table() -> tuple[float, ...]:
    return struct.unpack(f"<{GAUSSIAN_TABLE_SIZE}f", gaussian_table_bytes())


def z_value(dist: str, key: int, index: int) -> float:
    """z of element ``index`` of the tensor whose stream key is ``key`` (reference, one element)."""
    if dist == RADEMACHER:
        bit = (stream64(key, index >> 6) >> (index & 63)) & 1
        return 1.0 - 2.0 * bit
    if dist == GAUSSIAN:
        lane = (stream64(key, index >> 2) >> (16 * (index & 3) + 4)) & 0xFFF
        return gaussian_table()[lane]
    raise ValueError(f"unknown perturbation distribution {dist!r}; expected one of {DISTRIBUTIONS}")


# --- low-rank z (spec.perturbation_rank = r > 0, SPEC section 5.1) -------------------------------
def lowrank_scale(rank: int) -> float:
    """1/sqrt(rank) for a power of 4: an exact power of two (so z = (integer) * scale is exact)."""
    if rank < 1 or rank & (rank - 1) or (rank.bit_length() - 1) % 2:
        raise ValueError(f"a low-rank perturbation's rank must be a power of 4, not {rank}")
    return 2.0 ** -((rank.bit_length() - 1) // 2)


def lowrank_z_value(key: int, shape: tuple[int, int], rank: int, index: int) -> float:
    """z of element ``index`` (row-major) of an m x n tensor under the rank-``rank`` rule:
    ``sum_c U[a, c] * V[b, c] / sqrt(rank)`` with the sign factors read from the tensor's own
    Rademacher stream, U first (element a*rank + c), then V (element (m + b)*rank + c).

    Every product is +-1 and every partial sum a small integer, so the sum is exact in any
    order and in float32 (even bfloat16 up to rank 256); times a power of two it stays exact:
    the same bits on every device, whatever the matmul kernel."""
    m, n = shape
    a, b = divmod(index, n)
    if not 0 <= a < m:
        raise IndexError(f"element {index} outside a {m} x {n} tensor")
    total = sum(z_value(RADEMACHER, key, a * rank + c) * z_value(RADEMACHER, key, (m + b) * rank + c)
                for c in range(rank))
    return total * lowrank_scale(rank)
