"""Replay: base weights + the ledger rebuild exactly the weights of live training."""

import random

import pytest
import torch

from conftest import TEXTS, make_spec, tiny_bert
from seedswarm.model.data import BatchStream
from seedswarm.model.replica import Replica, replay
from seedswarm.model.tasks import PRESETS, build_task
from seedswarm.protocol import Ledger, LedgerFile, LRSchedule, Record, Signer, decode_ledger
from seedswarm.protocol.aggregation import step_gradients
from seedswarm.protocol.spec import Aggregation, ModelRef

SIGNERS = [Signer(bytes([i + 1]) * 32) for i in range(3)]


def train_swarm_in_process(spec, tokenizer, steps):
    """Each simulated machine trains on its own shard; every replica applies all records of a
    step through the step rule. Returns (live replicas, all records)."""
    task = build_task(spec.task, tokenizer)
    replicas = [Replica.for_task(tiny_bert(), spec, task) for _ in SIGNERS]
    streams = [BatchStream(TEXTS[i::3] + TEXTS[:2], 4, seed=i) for i in range(3)]
    records = []
    for step in range(steps):
        round_records = []
        for signer, replica, stream in zip(SIGNERS, replicas, streams):
            batches = [task.collate(next(stream)) for _ in range(spec.samples_per_step)]
            round_records.append(replica.local_step(step, signer, batches).record)
        for replica in replicas:
            replica.apply_step(round_records)
        records += round_records
    return replicas, records


@pytest.mark.parametrize("variant", [
    dict(),
    dict(perturbation="gaussian", samples_per_step=2, trainable=("*bias", "*LayerNorm*"), weight_decay=0.1,
         aggregation=Aggregation(clip="none"),
         lr=LRSchedule(base=5e-3, kind="cosine", warmup_steps=5, total_steps=30, min_ratio=0.1)),
    dict(perturbation_rank=4, aggregation=Aggregation(normalize="rms"), lr=LRSchedule(base=1e-3), steps=6),  # SPEC 5.1
    dict(seed_pool=2, samples_per_step=2, weight_decay=0.1, steps=8),  # SPEC 5.2: collisions in the pool
])
def test_three_machines_forty_steps_then_a_fresh_replica_replays_to_the_same_digest(tokenizer, tmp_path, variant):
    variant = dict(variant)
    steps = variant.pop("steps", 40)
    spec = make_spec(model=ModelRef("tiny-bert"), **{"weight_decay": 0.01, **variant})
    base_digest = Replica(tiny_bert(), spec).digest()
    replicas, records = train_swarm_in_process(spec, tokenizer, steps=steps)
    live = {r.digest() for r in replicas}
    assert len(live) == 1 and live != {base_digest}

    # through a ledger file, with the records in arrival order scrambled and some duplicated
    with LedgerFile(tmp_path / "ledger.ssl", spec) as lf:
        shuffled = records + records[:7]
        random.Random(0).shuffle(shuffled)
        lf.add(shuffled)
    file_spec, file_records, torn = decode_ledger((tmp_path / "ledger.ssl").read_bytes())
    assert file_spec == spec and torn == 0 and len(file_records) == 3 * steps
    fresh = replay(tiny_bert(), file_spec, file_records)
    assert Replica(fresh, spec).digest() == live.pop()


def test_applying_in_a_different_order_changes_the_weights(tokenizer):
    """Steps must be applied in order (float addition is not associative): a replica that
    applied a late step at arrival time instead of its canonical place would drift."""
    spec = make_spec(lr=LRSchedule(base=1e-1))
    _, records = train_swarm_in_process(spec, tokenizer, steps=4)
    canonical = Replica(replay(tiny_bert(), spec, records), spec).digest()
    replica = Replica(tiny_bert(), spec)
    for step in reversed(range(4)):
        replica.apply_step([r for r in records if r.step == step])
    assert replica.digest() != canonical


def test_an_exact_duplicate_is_applied_once_and_an_equivocation_voids_that_step(tokenizer):
    spec = make_spec(lr=LRSchedule(base=1e-2))
    _, records = train_swarm_in_process(spec, tokenizer, steps=6)
    once = Replica(replay(tiny_bert(), spec, records), spec).digest()
    assert Replica(replay(tiny_bert(), spec, records + records[:5]), spec).digest() == once

    # machine 0 signs a second, different record of step 3: neither of its step-3 records applies
    cheat = next(r for r in records if r.step == 3 and r.machine == SIGNERS[0].machine)
    forged = Record.create(SIGNERS[0], spec.swarm_id, 3, cheat.scale_exp, bytes([(cheat.grads[0] + 5) % 120]))
    voided = Replica(replay(tiny_bert(), spec, records + [forged]), spec).digest()
    without = [r for r in records if r is not cheat]
    assert voided == Replica(replay(tiny_bert(), spec, without), spec).digest() != once
    assert Ledger(records + [forged]).equivocators() == {SIGNERS[0].machine: 3}


@pytest.mark.parametrize("rule", ["median", "redescend"])
def test_the_step_rule_bounds_a_maximal_record(tokenizer, rule):
    """A record of maximal bytes moves the weights no further than the step's median gradient
    times the factor (clipped to it, or with redescend almost not at all)."""
    spec = make_spec(lr=LRSchedule(base=1e-2), aggregation=Aggregation(clip=rule, clip_factor=2.0))
    _, records = train_swarm_in_process(spec, tokenizer, steps=1)
    hostile = Signer(bytes([9]) * 32)
    loud = Record.create(hostile, spec.swarm_id, 0, 0, b"\x7f")  # +clip, the largest value a byte says
    honest = [abs(g) for r in records for g in r.values(spec.codec.clip)]
    ordered = sorted(records + [loud], key=lambda r: r.order_key)
    effective = step_gradients(spec, ordered)
    bound = 2.0 * sorted(honest + [64.0])[len(honest) // 2]
    assert max(abs(g) for gs in effective for g in gs) <= bound
    loud_effect = abs(effective[ordered.index(loud)][0])
    assert loud_effect == (bound if rule == "median" else bound * bound / 64.0) < 64.0


def test_replica_losses_go_down(tokenizer):
    spec = make_spec(lr=LRSchedule(base=2e-3))
    task = build_task(PRESETS["sentiment"], tokenizer)
    replica = Replica.for_task(tiny_bert(seed=4), spec, task)
    batch = task.collate(TEXTS)
    with torch.no_grad():
        first = float(task.loss(replica.model, batch))
    for step in range(60):
        replica.apply_step([replica.local_step(step, SIGNERS[0], [batch]).record])
    replica.flush()
    with torch.no_grad():
        assert float(task.loss(replica.model, batch)) < first
