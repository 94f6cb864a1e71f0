"""A model replica that follows a swarm spec: local SPSA steps in, records out, and back.

The update of record r, sample i (protocol SPEC.md, "Update rule")::

    lr    = spec.lr(r.step)                      (IEEE double)
    coef  = float32(-(lr * g_hat_i))             (g_hat_i decoded from the byte)
    decay = float32(1 - lr * spec.weight_decay)  (1 for tensors matching spec.no_decay)
    theta <- theta * decay + coef * z(seed_i)    (per element, see perturb.py)

Every replica applies the same records in the ledger's canonical order, so replicas,
live or rebuilt from a ledger, hold bit-identical weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..protocol import codec
from ..protocol.hashing import derive_seed
from ..protocol.records import Record
from ..protocol.spec import SwarmSpec
from .digest import weight_digest
from .zo import PairedLoss, ZerothOrder

LossFn = Callable[[nn.Module, Any], torch.Tensor]
AUTO_FLUSH = 256


@dataclass
class LocalStep:
    record: Record
    grads: list[float]       # exact projected gradients before quantisation
    losses: list[float]      # mean of the +eps and -eps losses, per sample
    seconds: float


class Replica:
    """``loss_fn(model, batch)`` gives the loss; ``paired_fn(model, batch)`` (optional, e.g.
    ``Task.paired``) gives both perturbed losses from one doubled forward."""

    def __init__(
        self, model: nn.Module, spec: SwarmSpec, loss_fn: LossFn | None = None,
        paired_fn: Callable[[nn.Module, Any], PairedLoss] | None = None,
    ) -> None:
        self.model = model
        self.spec = spec
        self.loss_fn = loss_fn
        self.paired_fn = paired_fn
        self.swarm_id = spec.swarm_id
        self.zo = ZerothOrder(model, spec.perturbation, spec.trainable, spec.frozen, spec.no_decay)
        self.applied = 0  # records applied

    @classmethod
    def for_task(cls, model: nn.Module, spec: SwarmSpec, task) -> "Replica":
        return cls(model, spec, task.loss, getattr(task, "paired", None))

    def seed(self, machine: bytes, sample: int) -> int:
        return derive_seed(self.swarm_id, machine, sample)

    # --- local training -----------------------------------------------------------------------
    def local_step(self, step: int, machine: bytes, first_sample: int, batches: Sequence[Any]) -> LocalStep:
        """One SPSA estimate per batch (sample counters first_sample, +1, ...), quantised into a record."""
        if self.loss_fn is None:
            raise RuntimeError("this replica has no loss function; it can only apply records")
        started = time.perf_counter()
        seeds = [self.seed(machine, first_sample + i) for i in range(len(batches))]
        grads, losses = [], []
        for seed, batch in zip(seeds, batches):
            paired = self.paired_fn(self.model, batch) if self.paired_fn is not None else None
            g, plus, minus = self.zo.projected_gradient(lambda: self.loss_fn(self.model, batch), seed, self.spec.eps, paired)
            if not np.isfinite(g):
                raise FloatingPointError(f"non-finite loss at step {step} (+eps {plus}, -eps {minus}): the model diverged; lower the lr or eps")
            grads.append(g)
            losses.append((plus + minus) / 2)
        codes, scale_exp = codec.encode(grads, seeds, self.spec.codec.clip)
        record = Record(step=step, machine=machine, first_sample=first_sample, scale_exp=scale_exp, grads=codes)
        return LocalStep(record, grads, losses, time.perf_counter() - started)

    # --- applying records ---------------------------------------------------------------------
    def update_terms(self, record: Record) -> list[tuple[int, float, float]]:
        """(seed, coef, decay) of every sample of ``record``, per the update rule above."""
        lr = self.spec.lr(record.step)
        decay = float(np.float32(1.0 - lr * self.spec.weight_decay))
        return [
            (self.seed(record.machine, sample), float(np.float32(-(lr * g))), decay)
            for sample, g in zip(record.samples, record.values(self.spec.codec.clip))
        ]

    def apply(self, records: Iterable[Record]) -> None:
        """Queue the updates of ``records`` (already in canonical order)."""
        for record in records:
            for seed, coef, decay in self.update_terms(record):
                self.zo.queue_update(seed, coef, decay)
            self.applied += 1
            if self.zo.pending >= AUTO_FLUSH:
                self.zo.flush()

    def flush(self) -> None:
        self.zo.flush()

    def reset(self) -> None:
        """Forget queued updates: call after overwriting the weights (checkpoint load, rebuild)."""
        self.zo.discard_pending()

    def digest(self) -> str:
        self.flush()
        return weight_digest(self.model)


def replay(model: nn.Module, spec: SwarmSpec, records: Iterable[Record]) -> nn.Module:
    """Base weights + records (canonical order) -> the swarm's weights, in place."""
    replica = Replica(model, spec)
    replica.apply(sorted(records, key=lambda r: r.order_key))
    replica.flush()
    return model
