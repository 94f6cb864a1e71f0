"""The step rule: a sealed step's records -> the update terms every replica applies.

One place for every step-level rule (robust clipping, then normalisation), each a
pure function of the spec and the step's applicable records in canonical order, so every
replica, and every replay, computes the same terms bit for bit.

For the step's records r_1..r_k (canonical order) with decoded gradients g_ij (codec.py,
exact doubles), ``spec.aggregation.clip = "median"`` with ``clip_factor`` c computes

    m = the lower median of { |g_ij| }   (sorted ascending a_0..a_{K-1}: a_{(K-1) // 2})
    b = c * m                            (double)
    g'_ij = g_ij if |g_ij| <= b, else b if g_ij > 0, else -b

so one record moves the weights at most as far as the step's median gradient (times c),
however large its bytes. ``"redescend"`` keeps the same bound but counts a gradient beyond it
the less the further out it is::

    g'_ij = g_ij if |g_ij| <= b, else (b*b)/|g_ij| if g_ij > 0, else -((b*b)/|g_ij|)

(a hostile peer's largest byte then counts almost nothing; a gradient exactly at b counts b,
the most any gradient counts). ``"none"`` keeps g' = g.

Then ``spec.aggregation.normalize = "rms"`` (FZOO-style) rescales the step by its own spread::

    S = 0.0;  for every g'_ij in order (records canonical, samples in order): S = S + g'_ij * g'_ij
    s = sqrt(S / K)                       (double: each product, sum, the division and sqrt rounded)
    g''_ij = g'_ij / s if s > 0 else g'_ij

so a step moves the weights by about lr along each direction whatever the gradients' scale
(the scale of ZO estimates drifts over training and differs between models, and one noisy
large estimate no longer sets the step length). ``"none"`` keeps g'' = g'. The update of
sample j of record r is then (SPEC section 10.4) ``coef = f32(-(lr(r.step) * g''_ij))`` with
the decay of the tensor.

In a pooled swarm (``spec.seed_pool = K``, SPEC 5.2) the samples that probed the same pool
direction k share one term instead: ``coef_k = f32(-(lr * S_k))`` with S_k the double sum of
their g'' (records in canonical order, samples in order), terms in ascending k; the step decays
once, on its first term. A step of N records then costs every replica at most K terms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .hashing import derive_seed
from .pool import pool_index, pool_seed
from .records import Record
from .spec import SwarmSpec
from .util import f32


@dataclass(frozen=True)
class UpdateTerm:
    """theta <- theta * decay + coef * z(seed), for every trainable tensor (decay only on
    tensors that decay)."""

    seed: int
    coef: float    # a float32 value, held in a Python float
    decay: float   # a float32 value


def clip_bound(spec: SwarmSpec, values: Sequence[float]) -> float | None:
    """The step's clip bound b, or None when the rule does not clip."""
    if spec.aggregation.clip == "none" or not values:
        return None
    magnitudes = sorted(abs(v) for v in values)
    return spec.aggregation.clip_factor * magnitudes[(len(magnitudes) - 1) // 2]


def clipped(spec: SwarmSpec, values: list[list[float]]) -> list[list[float]]:
    """g' of every decoded gradient (per record, same order): the robust clip of the step."""
    bound = clip_bound(spec, [v for vs in values for v in vs])
    if bound is None:
        return values
    if spec.aggregation.clip == "redescend":
        square = bound * bound
        return [[v if abs(v) <= bound else (square / abs(v) if v > 0 else -(square / abs(v))) for v in vs] for vs in values]
    return [[v if abs(v) <= bound else (bound if v > 0 else -bound) for v in vs] for vs in values]


def spread(values: list[list[float]]) -> float:
    """The root mean square of all of a step's gradients, summed in application order."""
    total, count = 0.0, 0
    for vs in values:
        for v in vs:
            total = total + v * v
            count += 1
    return math.sqrt(total / count) if count else 0.0


def normalized(spec: SwarmSpec, values: list[list[float]], canonical: list[list[float]] | None = None) -> list[list[float]]:
    """g'' = g' / (the step's RMS) under ``normalize = "rms"``; g' otherwise (or if the RMS is 0).
    ``canonical``: the same lists in canonical record order, if ``values`` are not (the sum's order)."""
    if spec.aggregation.normalize == "none":
        return values
    s = spread(values if canonical is None else canonical)
    if not s > 0.0:
        return values
    return [[v / s for v in vs] for vs in values]


def step_gradients(spec: SwarmSpec, records: Sequence[Record]) -> list[list[float]]:
    """The effective gradients g'' of each record (same order), per the spec's step rule:
    decode, clip, normalize. Sums run in canonical order whatever order ``records`` are in."""
    values = clipped(spec, [r.values(spec.codec.clip) for r in records])
    order = sorted(range(len(records)), key=lambda i: records[i].order_key)
    return normalized(spec, values, [values[i] for i in order])


def step_terms(spec: SwarmSpec, records: Sequence[Record]) -> list[UpdateTerm]:
    """Update terms of one sealed step, in application order (records in canonical order,
    samples in order; pooled swarms: one term per pool direction used, ascending). ``records``
    must all be of one step and already admitted. Every path that applies records to weights
    (replicas, replay, rebuilds) goes through here."""
    records = sorted(records, key=lambda r: r.order_key)
    if len({r.step for r in records}) > 1:
        raise ValueError("step_terms takes the records of one step")
    grads = step_gradients(spec, records)
    if spec.seed_pool:
        return _pooled_terms(spec, records, grads)
    swarm, n = spec.swarm_id, spec.samples_per_step
    terms = []
    for record, gs in zip(records, grads):
        lr = spec.lr(record.step)
        decay = f32(1.0 - lr * spec.weight_decay)
        for sample, g in zip(record.samples(n), gs):
            terms.append(UpdateTerm(derive_seed(swarm, record.machine, sample), f32(-(lr * g)), decay))
    return terms


def pool_sums(spec: SwarmSpec, records: Sequence[Record], grads: list[list[float]]) -> dict[int, float]:
    """S_k of each pool direction k that a sample of the step probed: the double sum of the
    samples' g'', starting from the first and adding in canonical record order, then sample
    order (``records`` sorted; ``grads`` their g'' in the same order)."""
    swarm, n, size = spec.swarm_id, spec.samples_per_step, spec.seed_pool
    sums: dict[int, float] = {}
    for record, gs in zip(records, grads):
        for sample, g in zip(record.samples(n), gs):
            k = pool_index(swarm, record.machine, sample, size)
            sums[k] = sums[k] + g if k in sums else g
    return sums


def _pooled_terms(spec: SwarmSpec, records: list[Record], grads: list[list[float]]) -> list[UpdateTerm]:
    """SPEC 10.4 for a pooled swarm: one term per direction used, in ascending pool index; the
    first carries the step's decay (a step decays once, however many records it holds)."""
    if not records:
        return []
    step = records[0].step
    lr = spec.lr(step)
    decay = f32(1.0 - lr * spec.weight_decay)
    swarm = spec.swarm_id
    sums = pool_sums(spec, records, grads)
    return [UpdateTerm(pool_seed(swarm, step, k), f32(-(lr * sums[k])), decay if i == 0 else 1.0)
            for i, k in enumerate(sorted(sums))]
