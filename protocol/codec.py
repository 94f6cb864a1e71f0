"""The one-byte codec for projected gradients.

A record carries the projected gradients g_1..g_n of its n perturbation samples
as n bytes plus one small integer, the scale exponent ``e`` shared by the record:

    scale = clip * 2**-e                       (e in 0..MAX_SCALE_EXP)
    byte  = q as int8 two's complement,        q in -127..127 (0x80 is invalid)
    g_hat = (q * scale) / 127                  (IEEE-754 double, in that order)

Encoding (the sender):

1. ``e`` is the largest exponent with max|g| <= clip * 2**-e (0 if max|g| >= clip),
   so the record's scale is the tightest power-of-two fraction of ``clip``;
2. x = clamp(g / scale * 127, -127, 127);
3. stochastic rounding: q = floor(x) + (u < x - floor(x)), with u = codec_uniform(seed)
   derived from the sample's seed, so re-encoding the same g yields the same byte.

E[g_hat] = g exactly for |g| <= clip (stochastic rounding is unbiased); larger
values are clipped to +-clip, which bounds what any single (possibly hostile)
record can do to the model. The error of one value is below scale/127 <=
2*max|g|/127 of the record.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .errors import ProtocolError
from .hashing import codec_uniform

LEVELS = 127
MAX_SCALE_EXP = 64
CODEC_NAME = "int8-sr-pow2"


def choose_scale_exp(values: Sequence[float], clip: float) -> int:
    """The largest e in 0..MAX_SCALE_EXP with max|values| <= clip * 2**-e."""
    peak = max((abs(v) for v in values), default=0.0)
    exp = 0
    while exp < MAX_SCALE_EXP and peak <= math.ldexp(clip, -(exp + 1)):
        exp += 1
    return exp


def encode(values: Sequence[float], seeds: Sequence[int], clip: float) -> tuple[bytes, int]:
    """Quantise projected gradients to one byte each. Returns (codes, scale_exp)."""
    if len(values) != len(seeds):
        raise ValueError("one seed per value is required")
    if not values:
        raise ValueError("nothing to encode")
    if not (clip > 0 and math.isfinite(clip)):
        raise ValueError("clip must be a positive finite number")
    for v in values:
        if not math.isfinite(v):
            raise ValueError(f"cannot encode a non-finite projected gradient ({v!r})")
    exp = choose_scale_exp(values, clip)
    scale = math.ldexp(clip, -exp)
    out = bytearray()
    for value, seed in zip(values, seeds):
        x = min(max(value / scale * LEVELS, -LEVELS), LEVELS)
        low = math.floor(x)
        q = low + (1 if codec_uniform(seed) < x - low else 0)
        q = min(max(q, -LEVELS), LEVELS)
        out.append(q & 0xFF)
    return bytes(out), exp


def decode(codes: bytes, scale_exp: int, clip: float) -> list[float]:
    """Bytes back to projected gradients. Raises ProtocolError on an invalid byte or exponent."""
    if not 0 <= scale_exp <= MAX_SCALE_EXP:
        raise ProtocolError(f"scale exponent {scale_exp} outside 0..{MAX_SCALE_EXP}")
    scale = math.ldexp(clip, -scale_exp)
    out = []
    for byte in codes:
        q = byte - 256 if byte >= 128 else byte
        if q == -128:
            raise ProtocolError("gradient byte 0x80 is not a valid code")
        out.append((q * scale) / LEVELS)
    return out
