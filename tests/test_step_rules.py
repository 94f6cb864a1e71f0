"""Step-level rules beyond clipping (protocol/aggregation.py): the RMS normalisation, its spec
field (optional: absent from the canonical bytes at its default) and bit-identical replay."""

import math
import random

import pytest

from conftest import make_spec, tiny_bert
from seedswarm.model.replica import Replica, replay
from seedswarm.protocol import LRSchedule, ProtocolError, Record, Signer, SwarmSpec
from seedswarm.protocol.aggregation import spread, step_gradients, step_terms
from seedswarm.protocol.spec import Aggregation, CodecParams
from seedswarm.protocol.util import f32
from test_replay import train_swarm_in_process

SIGNERS = [Signer(bytes([0x30 + i]) * 32) for i in range(4)]


def _records(spec, codes):
    return [Record.create(s, spec.swarm_id, 5, 1, bytes(c)) for s, c in zip(SIGNERS, codes)]


def test_rms_divides_every_clipped_gradient_by_the_steps_root_mean_square():
    spec = make_spec(codec=CodecParams(clip=64.0), samples_per_step=2, lr=LRSchedule(base=0.01),
                     aggregation=Aggregation("none", normalize="rms"))
    records = _records(spec, [[10, 246], [5, 12], [127, 0], [3, 250]])
    raw = [r.values(64.0) for r in sorted(records, key=lambda r: r.order_key)]
    flat = [v for vs in raw for v in vs]
    total = 0.0
    for v in flat:
        total = total + v * v
    s = math.sqrt(total / len(flat))
    got = step_gradients(spec, sorted(records, key=lambda r: r.order_key))
    assert [v for vs in got for v in vs] == [v / s for v in flat]
    assert math.isclose(math.sqrt(sum(v * v for vs in got for v in vs) / len(flat)), 1.0, rel_tol=1e-12)
    # order-free: any arrival order gives the same terms (sums run in canonical order)
    terms = step_terms(spec, records)
    for seed in range(4):
        shuffled = records[:]
        random.Random(seed).shuffle(shuffled)
        assert step_terms(spec, shuffled) == terms
    assert [t.coef for t in terms] == [f32(-(0.01 * g)) for vs in got for g in vs]


def test_rms_single_gradient_is_a_step_of_lr_and_zeros_stay_zeros():
    spec = make_spec(codec=CodecParams(clip=64.0), aggregation=Aggregation(normalize="rms"), lr=LRSchedule(base=0.5))
    (one,) = _records(spec, [[200]])
    assert step_gradients(spec, [one]) == [[-1.0]] and step_terms(spec, [one])[0].coef == 0.5
    zeros = _records(spec, [[0], [0]])
    assert step_gradients(spec, zeros) == [[0.0], [0.0]] and spread([[0.0], [0.0]]) == 0.0
    # after the default redescend clip: the outlier is tamed first, then the step is normalised
    out = _records(spec, [[4], [5], [127]])
    clipped_then = step_gradients(spec, out)
    assert max(abs(v) for vs in clipped_then for v in vs) < 1.5


def test_normalize_is_an_optional_field_validated_with_a_clear_error():
    base = make_spec()
    assert "normalize" not in base.to_dict()["aggregation"]
    same = SwarmSpec.from_dict({**base.to_dict(), "aggregation": {**base.to_dict()["aggregation"], "normalize": "none"}})
    assert same.swarm_id == base.swarm_id
    rms = make_spec(aggregation=Aggregation(normalize="rms"))
    assert rms.to_dict()["aggregation"]["normalize"] == "rms" and rms.swarm_id != base.swarm_id
    assert SwarmSpec.from_canonical(rms.canonical_bytes(), rms.swarm_id) == rms
    assert SwarmSpec.from_json(rms.to_json()) == rms
    with pytest.raises(ProtocolError, match="normalize must be one of"):
        make_spec(aggregation=Aggregation(normalize="std"))


def test_an_rms_swarm_replays_bit_identically_and_differs_from_the_plain_rule(tokenizer):
    spec = make_spec(aggregation=Aggregation(normalize="rms"), samples_per_step=2, lr=LRSchedule(base=1e-3))
    replicas, records = train_swarm_in_process(spec, tokenizer, steps=6)
    live = {r.digest() for r in replicas}
    assert len(live) == 1
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    digest = live.pop()
    assert Replica(replay(tiny_bert(), spec, shuffled), spec).digest() == digest
    plain = make_spec(samples_per_step=2, lr=LRSchedule(base=1e-3))
    assert Replica(replay(tiny_bert(), plain, records), plain).digest() != digest
