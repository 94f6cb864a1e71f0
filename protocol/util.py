"""Small exact helpers shared by the protocol modules."""

from __future__ import annotations

import math
import struct

_F32 = struct.Struct("<f")


def f32(x: float) -> float:
    """Round a double to the nearest float32 (ties to even), as IEEE-754 does: values past
    the float32 range become infinities. Returned as a Python float."""
    try:
        return _F32.unpack(_F32.pack(x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)
