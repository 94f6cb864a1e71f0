"""A model replica that follows a swarm spec: local SPSA steps in, records out, and back.

A sealed step's records become update terms through the spec's step rule
(``protocol.aggregation.step_terms``: robust clipping, then for record r, sample i)::

    lr    = spec.lr(r.step)                      (IEEE double)
    coef  = float32(-(lr * g'_i))                (g'_i: the decoded byte after the step rule)
    decay = float32(1 - lr * spec.weight_decay)  (1 for tensors matching spec.no_decay)
    theta <- theta * decay + coef * z(seed_i)    (per element, see perturb.py)

(in a pooled swarm, ``spec.seed_pool``, one term per pool direction instead: SPEC 5.2, 10.4).

Every replica applies the same steps in order and each step's records in canonical order,
so replicas, live or rebuilt from a ledger, hold bit-identical weights.
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
from ..protocol.aggregation import UpdateTerm, step_terms
from ..protocol.hashing import derive_seed
from ..protocol.identity import Signer
from ..protocol.pool import direction_seed
from ..protocol.ledger import Ledger
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
        self.zo = ZerothOrder(model, spec.perturbation, spec.trainable, spec.frozen, spec.no_decay,
                              spec.perturbation_rank)
        self.applied = 0  # records applied

    @classmethod
    def for_task(cls, model: nn.Module, spec: SwarmSpec, task) -> "Replica":
        return cls(model, spec, task.loss, getattr(task, "paired", None))

    def seed(self, machine: bytes, sample: int) -> int:
        """The seed of the direction sample counter ``sample`` of ``machine`` probes: its own
        (SPEC 5) or, in a pooled swarm, its pool entry's (SPEC 5.2)."""
        return direction_seed(self.spec, machine, sample)

    # --- local training -----------------------------------------------------------------------
    def local_step(self, step: int, signer: Signer, batches: Sequence[Any], ticket: bytes = b"") -> LocalStep:
        """One SPSA estimate per batch (the step's samples 0..n-1, n = spec.samples_per_step),
        quantised into a record signed by ``signer``."""
        if self.loss_fn is None:
            raise RuntimeError("this replica has no loss function; it can only apply records")
        if len(batches) != self.spec.samples_per_step:
            raise ValueError(f"a step takes spec.samples_per_step = {self.spec.samples_per_step} batches")
        started = time.perf_counter()
        samples = range(step * self.spec.samples_per_step, (step + 1) * self.spec.samples_per_step)
        grads, losses = [], []
        for sample, batch in zip(samples, batches):
            seed = self.seed(signer.machine, sample)
            paired = self.paired_fn(self.model, batch) if self.paired_fn is not None else None
            g, plus, minus = self.zo.projected_gradient(lambda: self.loss_fn(self.model, batch), seed, self.spec.eps, paired)
            if not np.isfinite(g):
                raise FloatingPointError(f"non-finite loss at step {step} (+eps {plus}, -eps {minus}): the model diverged; lower the lr or eps")
            grads.append(g)
            losses.append((plus + minus) / 2)
        # the codec rounds with each sample's own seed, pooled or not (SPEC 6)
        codes, scale_exp = codec.encode(grads, [derive_seed(self.swarm_id, signer.machine, s) for s in samples],
                                        self.spec.codec.clip)
        record = Record.create(signer, self.swarm_id, step, scale_exp, codes, ticket)
        return LocalStep(record, grads, losses, time.perf_counter() - started)

    # --- applying records ---------------------------------------------------------------------
    def apply_step(self, records: Sequence[Record]) -> None:
        """Queue the updates of one sealed step: its applicable records (protocol.ledger), any
        order (the step rule sorts them)."""
        if records:
            self.apply_terms(step_terms(self.spec, records))
            self.applied += len(records)

    def apply_terms(self, terms: Iterable[UpdateTerm]) -> None:
        for term in terms:
            self.zo.queue_update(term.seed, term.coef, term.decay)
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
    """Base weights + a ledger's records (any order, duplicates and equivocations included:
    the ledger's set semantics decide what applies) -> the swarm's weights, in place."""
    ledger = records if isinstance(records, Ledger) else Ledger(records)
    replica = Replica(model, spec)
    for step in ledger.steps():
        replica.apply_step(ledger.applicable(step))
    replica.flush()
    return model
