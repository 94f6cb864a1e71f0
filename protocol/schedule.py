"""Learning-rate schedules as pure functions of the step, reproducible everywhere.

Only IEEE-754 +, -, *, / are used (the cosine is a fixed Taylor polynomial
rather than libm's cos), so every replica in every language computes the same
double for the same step, which is then rounded to float32 by the update rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import ProtocolError

SCHEDULES = ("constant", "linear", "cosine")
MAX_LR = 1e6
MAX_STEPS = 1 << 32


def cos_pi(t: float) -> float:
    """cos(pi * t) for t in [0, 1], from a fixed even Taylor polynomial (error < 1e-15)."""
    # Reduce to [0, 1/2] with cos(pi t) = -cos(pi (1 - t)), so the series argument is <= pi/2.
    sign = 1.0
    if t > 0.5:
        t, sign = 1.0 - t, -1.0
    x2 = (math.pi * t) * (math.pi * t)
    term, total = 1.0, 1.0
    for k in range(1, 16):
        term = term * (-x2) / ((2 * k - 1) * (2 * k))
        total = total + term
    return sign * total


@dataclass(frozen=True)
class LRSchedule:
    """lr(step) = base * warmup factor * decay factor.

    - warmup: linear from base/warmup_steps to base over ``warmup_steps`` steps;
    - ``constant``: no decay; ``linear``/``cosine``: decay from base to base*min_ratio
      at ``total_steps``, then hold.
    """

    base: float = 1e-4
    kind: str = "constant"
    warmup_steps: int = 0
    total_steps: int = 0
    min_ratio: float = 0.0

    def __post_init__(self) -> None:
        if type(self.kind) is not str or self.kind not in SCHEDULES:
            raise ProtocolError(f"lr schedule kind {self.kind!r} is not one of {SCHEDULES}")
        if not (type(self.base) is float and 0.0 <= self.base <= MAX_LR):
            raise ProtocolError(f"lr base must be a float in [0, {MAX_LR:g}]")
        if type(self.warmup_steps) is not int or not 0 <= self.warmup_steps <= MAX_STEPS:
            raise ProtocolError(f"warmup_steps must be an integer in 0..{MAX_STEPS}")
        if type(self.total_steps) is not int or not 0 <= self.total_steps <= MAX_STEPS:
            raise ProtocolError(f"total_steps must be an integer in 0..{MAX_STEPS}")
        if self.kind != "constant" and self.total_steps <= self.warmup_steps:
            raise ProtocolError("a decaying lr schedule needs total_steps > warmup_steps")
        if not (type(self.min_ratio) is float and 0.0 <= self.min_ratio <= 1.0):
            raise ProtocolError("min_ratio must be a float in [0, 1]")

    def __call__(self, step: int) -> float:
        lr = self.base
        if step < self.warmup_steps:
            return lr * (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return lr
        progress = min((step - self.warmup_steps) / (self.total_steps - self.warmup_steps), 1.0)
        if self.kind == "linear":
            factor = 1.0 - progress
        else:
            factor = 0.5 * (1.0 + cos_pi(progress))
        return lr * (self.min_ratio + (1.0 - self.min_ratio) * factor)
