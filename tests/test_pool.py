"""Seed pools (spec.seed_pool, SPEC 5.2): a step's samples share K directions, so a sealed step
of N records is at most K update terms."""

import collections
import json
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import TEXTS, make_spec, tiny_bert
from seedswarm.model.digest import weight_digest
from seedswarm.model.replica import Replica
from seedswarm.model.tasks import PRESETS, build_task
from seedswarm.model.zo import ZerothOrder
from seedswarm.protocol import ProtocolError, Record, Signer, SwarmSpec, codec
from seedswarm.protocol.aggregation import UpdateTerm, step_gradients, step_terms
from seedswarm.protocol.canonical import pack, unpack_canonical
from seedswarm.protocol.hashing import derive_seed
from seedswarm.protocol.pool import MAX_SEED_POOL, direction_seed, pool_index, pool_seed
from seedswarm.protocol.spec import Aggregation, LRSchedule
from seedswarm.protocol.util import f32

SIGNERS = [Signer(i.to_bytes(32, "big")) for i in range(1, 41)]


def records_of(spec, step=3, count=40):
    """``count`` records of one step with varied bytes (a zero and an outlier among them)."""
    rng = random.Random(step)
    n = spec.samples_per_step
    return [Record.create(s, spec.swarm_id, step, 2, bytes(rng.choice([0, 1, 5, 40, 127, 200, 255]) for _ in range(n)))
            for s in SIGNERS[:count]]


# --- the spec field --------------------------------------------------------------------------------
def test_seed_pool_is_optional_and_round_trips():
    plain = make_spec()
    assert "seed_pool" not in plain.to_dict()
    assert make_spec(seed_pool=0).swarm_id == plain.swarm_id
    assert SwarmSpec.from_json(json.dumps({**plain.to_dict(), "seed_pool": 0})).swarm_id == plain.swarm_id
    pooled = make_spec(seed_pool=64)
    assert pooled.to_dict()["seed_pool"] == 64 and pooled.swarm_id != plain.swarm_id
    assert SwarmSpec.from_canonical(pooled.canonical_bytes(), pooled.swarm_id) == pooled
    assert SwarmSpec.from_json(pooled.to_json()) == pooled
    # canonical bytes carrying the field at its default are not canonical
    carried = pack({**unpack_canonical(plain.canonical_bytes(), 1 << 15, "spec"), "seed_pool": 0})
    with pytest.raises(ProtocolError, match="canonical"):
        SwarmSpec.from_canonical(carried)


@pytest.mark.parametrize("bad", [-1, MAX_SEED_POOL + 1, 2**64, True, 4.0, "4", None])
def test_bad_seed_pool_is_rejected(bad):
    with pytest.raises(ProtocolError, match="spec.seed_pool must be an integer in 0..65536"):
        SwarmSpec.from_json(json.dumps({**make_spec().to_dict(), "seed_pool": bad}))


@pytest.mark.parametrize("pool", [1, 3, MAX_SEED_POOL])
def test_seed_pool_composes_with_every_perturbation(pool):
    for extra in ({}, {"perturbation": "gaussian"}, {"perturbation_rank": 4}):
        assert make_spec(seed_pool=pool, **extra).seed_pool == pool


# --- indices and seeds ---------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(machine=st.binary(min_size=1, max_size=64), sample=st.integers(0, 2**64 - 1),
       size=st.integers(1, MAX_SEED_POOL))
def test_pool_index_is_a_deterministic_entry_of_the_pool(machine, sample, size):
    swarm = make_spec().swarm_id
    k = pool_index(swarm, machine, sample, size)
    assert 0 <= k < size and k == pool_index(swarm, machine, sample, size)
    assert pool_index(swarm, machine, sample, 1) == 0


def test_pool_index_spreads_samples_evenly():
    """1,600 (machine, sample) pairs over 16 entries: every entry gets its share within the
    binomial noise (mean 100, sd ~9.7; the bounds are ~4 sd)."""
    swarm = make_spec().swarm_id
    counts = collections.Counter(pool_index(swarm, s.machine, j, 16) for s in SIGNERS for j in range(40))
    assert len(counts) == 16 and all(60 <= c <= 140 for c in counts.values()), counts


def test_pool_seeds_are_per_step_and_entry():
    swarm = make_spec().swarm_id
    seeds = {pool_seed(swarm, t, k) for t in range(8) for k in range(64)}
    assert len(seeds) == 8 * 64
    with pytest.raises(ValueError):
        pool_seed(swarm, 0, MAX_SEED_POOL)


def test_direction_seed_is_the_sample_seed_without_a_pool_and_the_pool_seed_with_one():
    plain, pooled = make_spec(samples_per_step=3), make_spec(samples_per_step=3, seed_pool=5)
    m = SIGNERS[0].machine
    assert direction_seed(plain, m, 7) == derive_seed(plain.swarm_id, m, 7)
    assert direction_seed(pooled, m, 7) == pool_seed(pooled.swarm_id, 2, pool_index(pooled.swarm_id, m, 7, 5))


# --- terms ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("pool,n", [(1, 1), (4, 2), (64, 1)])
def test_a_step_collapses_into_one_term_per_direction_used(pool, n):
    spec = make_spec(seed_pool=pool, samples_per_step=n, weight_decay=0.5, lr=LRSchedule(base=1e-2),
                     aggregation=Aggregation(normalize="rms"))
    records = records_of(spec)
    terms = step_terms(spec, records)
    shuffled = records[::-1]
    assert step_terms(spec, shuffled) == terms
    # expected: g'' summed per pool index in canonical order, as SPEC 10.4 says
    ordered = sorted(records, key=lambda r: r.order_key)
    sums: dict[int, float] = {}
    for r, gs in zip(ordered, step_gradients(spec, ordered)):
        for j, g in enumerate(gs):
            k = pool_index(spec.swarm_id, r.machine, r.step * n + j, pool)
            sums[k] = sums[k] + g if k in sums else g
    lr = spec.lr(3)
    assert terms == [UpdateTerm(pool_seed(spec.swarm_id, 3, k), f32(-(lr * sums[k])), f32(1.0 - lr * 0.5) if i == 0 else 1.0)
                     for i, k in enumerate(sorted(sums))]
    assert len(terms) == len(sums) <= min(pool, len(records) * n)  # 40 samples over 64 entries collide too
    assert step_terms(spec, []) == []


def test_one_record_gives_the_unpooled_coefficient_along_its_pool_direction():
    plain, pooled = make_spec(weight_decay=0.1), make_spec(weight_decay=0.1, seed_pool=16)
    [p] = step_terms(plain, records_of(plain, count=1))
    [q] = step_terms(pooled, records_of(pooled, count=1))
    assert (p.coef, p.decay) == (q.coef, q.decay)
    assert q.seed == direction_seed(pooled, SIGNERS[0].machine, 3)


def test_pooled_records_give_the_weights_of_their_collapsed_terms():
    spec = make_spec(seed_pool=4, samples_per_step=2, weight_decay=0.1, trainable=("*bias", "*LayerNorm*"))
    records = records_of(spec)
    by_records = Replica(tiny_bert(), spec)
    by_records.apply_step(records)
    by_terms = Replica(tiny_bert(), spec)
    by_terms.apply_terms(step_terms(spec, records))
    assert by_records.digest() == by_terms.digest() != Replica(tiny_bert(), spec).digest()
    # and close to applying every sample on its own along its pool direction (the sum, unrounded)
    one_by_one = Replica(tiny_bert(), spec)
    ordered = sorted(records, key=lambda r: r.order_key)
    lr = spec.lr(3)
    one_by_one.zo.queue_update(0, 0.0, f32(1.0 - lr * 0.1))  # the step's one decay
    for r, gs in zip(ordered, step_gradients(spec, ordered)):
        for j, g in enumerate(gs):
            one_by_one.zo.queue_update(direction_seed(spec, r.machine, r.step * 2 + j), f32(-(lr * g)))
    one_by_one.flush()
    for a, b in zip(by_records.zo.tensors, one_by_one.zo.tensors):
        torch.testing.assert_close(a.param.data, b.param.data, rtol=0, atol=1e-6)


# --- the local probe -----------------------------------------------------------------------------
def test_a_peer_probes_along_its_pool_direction_and_rounds_with_its_own_seed(tokenizer):
    spec = make_spec(seed_pool=3, samples_per_step=2)
    task = build_task(PRESETS["sentiment"], tokenizer)
    batch = task.collate(TEXTS)
    replica = Replica.for_task(tiny_bert(), spec, task)
    local = replica.local_step(5, SIGNERS[0], [batch, batch])
    twin = tiny_bert()
    zo = ZerothOrder(twin, spec.perturbation)
    m, swarm = SIGNERS[0].machine, spec.swarm_id
    for j, g in enumerate(local.grads):
        seed = pool_seed(swarm, 5, pool_index(swarm, m, 10 + j, 3))
        expected, _, _ = zo.projected_gradient(lambda: task.loss(twin, batch), seed, spec.eps)
        assert g == pytest.approx(expected, rel=1e-5, abs=1e-6)
    codes, exp = codec.encode(local.grads, [derive_seed(swarm, m, 10 + j) for j in range(2)], spec.codec.clip)
    assert (local.record.grads, local.record.scale_exp) == (codes, exp)
    assert weight_digest(replica.model) == weight_digest(twin)  # probing leaves the weights alone
