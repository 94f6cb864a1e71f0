"""Replay: base weights + the ledger rebuild exactly the weights of live training."""

import random

import pytest
import torch

from conftest import TEXTS, make_spec, tiny_bert
from seedswarm.model.data import BatchStream
from seedswarm.model.replica import Replica, replay
from seedswarm.model.tasks import PRESETS, build_task
from seedswarm.protocol import LedgerFile, LRSchedule, decode_ledger
from seedswarm.protocol.spec import ModelRef

MACHINES = [b"machine-a", b"machine-b", b"machine-c"]


def train_swarm_in_process(spec, tokenizer, steps):
    """Each simulated machine trains on its own shard; every replica applies all records of a
    step in canonical order. Returns (live replicas, all records)."""
    task = build_task(spec.task, tokenizer)
    replicas = [Replica.for_task(tiny_bert(), spec, task) for _ in MACHINES]
    streams = [BatchStream(TEXTS[i::3] + TEXTS[:2], 4, seed=i) for i in range(3)]
    records = []
    for step in range(steps):
        round_records = []
        for machine, replica, stream in zip(MACHINES, replicas, streams):
            n = spec.samples_per_step
            batches = [task.collate(next(stream)) for _ in range(n)]
            round_records.append(replica.local_step(step, machine, step * n, batches).record)
        round_records.sort(key=lambda r: r.order_key)
        for replica in replicas:
            replica.apply(round_records)
        records += round_records
    return replicas, records


@pytest.mark.parametrize("variant", [
    dict(),
    dict(perturbation="gaussian", samples_per_step=2, trainable=("*bias", "*LayerNorm*"), weight_decay=0.1,
         lr=LRSchedule(base=5e-3, kind="cosine", warmup_steps=5, total_steps=30, min_ratio=0.1)),
])
def test_three_machines_forty_steps_then_a_fresh_replica_replays_to_the_same_digest(tokenizer, tmp_path, variant):
    spec = make_spec(model=ModelRef("tiny-bert"), **{"weight_decay": 0.01, **variant})
    base_digest = Replica(tiny_bert(), spec).digest()
    replicas, records = train_swarm_in_process(spec, tokenizer, steps=40)
    live = {r.digest() for r in replicas}
    assert len(live) == 1 and live != {base_digest}

    # through a ledger file, and with the records in arrival order scrambled
    with LedgerFile(tmp_path / "ledger.ssl", spec) as lf:
        shuffled = records[:]
        random.Random(0).shuffle(shuffled)
        lf.append(shuffled)
    file_spec, file_records, torn = decode_ledger((tmp_path / "ledger.ssl").read_bytes())
    assert file_spec == spec and torn == 0 and len(file_records) == 120
    fresh = replay(tiny_bert(), file_spec, file_records)
    assert Replica(fresh, spec).digest() == live.pop()


def test_applying_in_a_different_order_changes_the_weights(tokenizer):
    """The canonical order matters (float addition is not associative): a replica that applied a
    late record at arrival time instead of its canonical place would drift."""
    spec = make_spec(lr=LRSchedule(base=1e-1))
    _, records = train_swarm_in_process(spec, tokenizer, steps=4)
    canonical = Replica(replay(tiny_bert(), spec, records), spec).digest()
    replica = Replica(tiny_bert(), spec)
    replica.apply(records[::-1])
    assert replica.digest() != canonical


def test_replica_losses_go_down(tokenizer):
    spec = make_spec(lr=LRSchedule(base=2e-3))
    task = build_task(PRESETS["sentiment"], tokenizer)
    replica = Replica.for_task(tiny_bert(seed=4), spec, task)
    batch = task.collate(TEXTS)
    with torch.no_grad():
        first = float(task.loss(replica.model, batch))
    for step in range(60):
        replica.apply([replica.local_step(step, b"m", step, [batch]).record])
    replica.flush()
    with torch.no_grad():
        assert float(task.loss(replica.model, batch)) < first
