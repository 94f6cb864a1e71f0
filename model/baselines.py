"""Reference points we compare against in benchmarks and experiments (not used in training).

- ``MezoStep``: MeZO's trainer (princeton-nlp/MeZO, large_models/trainer.py): torch's global
  generator, z = torch.normal per parameter after manual_seed, perturb +eps, -2eps, +eps in
  place, then regenerate z a fourth time for the update. Four regenerations per step.
- ``justonebyte_quantize``: the log-scale quantiser of ezelikman/justonebyte (app.py):
  power = clamp(round(16 ln|g|), -127, 127), restored = sign(g) exp(power / 16).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn


class MezoStep:
    def __init__(self, params: Sequence[tuple[str, nn.Parameter]], eps: float = 1e-3, lr: float = 1e-4, weight_decay: float = 0.0):
        self.params = list(params)
        self.eps, self.lr, self.weight_decay = eps, lr, weight_decay

    def _perturb(self, seed: int, scaling: float) -> None:
        torch.manual_seed(seed)
        for _, p in self.params:
            z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
            p.data = p.data + scaling * z * self.eps

    def step(self, loss_fn: Callable[[], torch.Tensor], seed: int) -> float:
        with torch.no_grad():
            self._perturb(seed, 1)
            loss1 = float(loss_fn())
            self._perturb(seed, -2)
            loss2 = float(loss_fn())
            self._perturb(seed, 1)
            g = (loss1 - loss2) / (2 * self.eps)
            torch.manual_seed(seed)
            for name, p in self.params:
                z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
                decay = 0.0 if ("bias" in name or "layer_norm" in name or "LayerNorm" in name) else self.weight_decay
                p.data = p.data - self.lr * (g * z + decay * p.data)
        return g


def justonebyte_quantize(g: float) -> float:
    """The Just One Byte reference quantiser: deterministic, log-scale, 9 bits (sign + 255 levels)."""
    if g == 0:
        return 0.0
    power = max(-127, min(127, round(16 * math.log(abs(g)))))
    return math.copysign(math.exp(power / 16), g)
