"""Records, swarm specs and the ledger: strict decoding, content addressing, canonical order."""

import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seedswarm.protocol import (CodecParams, Ledger, LedgerFile, LRSchedule, ModelRef, ProtocolError, Record,
                                SwarmSpec, TaskRef, decode_ledger, decode_record, encode_ledger, parse_swarm_id)
from seedswarm.protocol.records import MAX_RECORD_BYTES

M1, M2 = b"machine-one", b"machine-two"


def rec(step=0, machine=M1, first=0, exp=3, grads=b"\x01\x02"):
    return Record(step=step, machine=machine, first_sample=first, scale_exp=exp, grads=grads)


def spec(**kw):
    base = dict(name="s", model=ModelRef("m"), task=TaskRef("label-prompts", {"prompts": ["a", "b"]}))
    base.update(kw)
    return SwarmSpec(**base)


# --- records ------------------------------------------------------------------------------------
def test_record_roundtrip():
    r = rec(step=5, first=2**40, grads=bytes([0, 1, 127, 129, 255]))
    assert decode_record(r.encode()) == r
    assert r.samples == range(2**40, 2**40 + 5)


@pytest.mark.parametrize("obj", [
    [1, 0, M1, 0, 3],                      # missing field
    [1, 0, M1, 0, 3, b"\x01", 0],          # extra field
    [2, 0, M1, 0, 3, b"\x01"],             # future version
    [1, -1, M1, 0, 3, b"\x01"],            # negative step
    [1, True, M1, 0, 3, b"\x01"],          # bool is not an int
    [1, 0, "m1", 0, 3, b"\x01"],           # machine as str
    [1, 0, b"", 0, 3, b"\x01"],            # empty machine
    [1, 0, b"x" * 65, 0, 3, b"\x01"],      # machine id too long
    [1, 0, M1, 0, 65, b"\x01"],            # scale exponent out of range
    [1, 0, M1, 0, 3, b""],                 # no gradients
    [1, 0, M1, 0, 3, b"\x80"],             # invalid code
    [1, 0, M1, 0, 3, [1, 2]],              # gradients as a list
    [1, 0, M1, 2**64 - 1, 3, b"\x01\x02"], # sample counter overflows
    {"step": 0},                           # a map
])
def test_malformed_records_raise_protocol_error(obj):
    with pytest.raises(ProtocolError):
        decode_record(msgpack.packb(obj, use_bin_type=True))


def test_oversized_and_trailing_bytes_rejected():
    with pytest.raises(ProtocolError):
        decode_record(rec().encode() + b"\x00")
    with pytest.raises(ProtocolError):
        decode_record(b"\x00" * (MAX_RECORD_BYTES + 1))
    with pytest.raises(ProtocolError):
        decode_record("not bytes")


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_random_bytes_never_escape_as_another_exception(data):
    try:
        decode_record(data)
    except ProtocolError:
        pass


@settings(max_examples=300)
@given(st.integers(0, len(rec().encode()) - 1), st.integers(0, 255))
def test_mutated_records_either_decode_validly_or_raise(pos, byte):
    data = bytearray(rec(grads=bytes(range(1, 20))).encode())
    data[pos] = byte
    try:
        r = decode_record(bytes(data))
    except ProtocolError:
        return
    assert 0x80 not in r.grads and 1 <= len(r.machine) <= 64


# --- spec -------------------------------------------------------------------------------------
def test_swarm_id_is_content_addressed():
    a = spec()
    assert a.swarm_id == spec().swarm_id
    assert SwarmSpec.from_canonical(a.canonical_bytes(), a.swarm_id) == a
    assert SwarmSpec.from_json(a.to_json()).swarm_id == a.swarm_id
    variants = [spec(eps=2e-3), spec(lr=LRSchedule(base=2e-4)), spec(codec=CodecParams(clip=8.0)), spec(name="t"),
                spec(task=TaskRef("label-prompts", {"prompts": ["a", "c"]})), spec(trainable=("*bias",)),
                spec(perturbation="gaussian"), spec(model=ModelRef("m", digest="0" * 64))]
    assert len({v.swarm_id for v in variants} | {a.swarm_id}) == len(variants) + 1
    with pytest.raises(ProtocolError):
        SwarmSpec.from_canonical(a.canonical_bytes(), spec(eps=2e-3).swarm_id)


def test_spec_key_order_does_not_matter_but_noncanonical_bytes_are_rejected():
    a = spec(task=TaskRef("k", {"b": 1, "a": [1, 2]}))
    b = spec(task=TaskRef("k", {"a": [1, 2], "b": 1}))
    assert a.swarm_id == b.swarm_id
    raw = msgpack.unpackb(a.canonical_bytes())
    shuffled = msgpack.packb(dict(reversed(list(raw.items()))), use_bin_type=True)
    with pytest.raises(ProtocolError):
        SwarmSpec.from_canonical(shuffled)


@pytest.mark.parametrize("bad", [
    {"eps": -1.0}, {"eps": float("nan")}, {"perturbation": "uniform"}, {"samples_per_step": 0},
    {"trainable": ()}, {"trainable": ("",)}, {"protocol_version": 2}, {"name": ""},
    {"model": ModelRef("m", digest="xyz")}, {"task": TaskRef("k", {"f": float("inf")})},
])
def test_invalid_specs_raise(bad):
    with pytest.raises(ProtocolError):
        spec(**bad)


def test_spec_from_dict_is_strict():
    d = spec().to_dict()
    d["epsilon"] = 1.0
    with pytest.raises(ProtocolError, match="epsilon"):
        SwarmSpec.from_dict(d)
    d = spec().to_dict()
    d["lr"]["kind"] = "exp"
    with pytest.raises(ProtocolError):
        SwarmSpec.from_dict(d)
    with pytest.raises(ProtocolError):
        SwarmSpec.from_json("{not json")
    with pytest.raises(ProtocolError):
        parse_swarm_id("abc")
    assert parse_swarm_id(spec().swarm_id_hex.upper()) == spec().swarm_id


def test_lr_schedules():
    warm = LRSchedule(base=1.0, kind="cosine", warmup_steps=4, total_steps=14, min_ratio=0.0)
    assert [warm(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warm(4) == 1.0 and abs(warm(9) - 0.5) < 1e-15 and warm(14) == 0.0 and warm(100) == 0.0
    lin = LRSchedule(base=2.0, kind="linear", total_steps=10, min_ratio=0.5)
    assert lin(0) == 2.0 and lin(5) == 1.5 and lin(10) == 1.0
    import math
    from seedswarm.protocol.schedule import cos_pi
    assert max(abs(cos_pi(t / 1000) - math.cos(math.pi * t / 1000)) for t in range(1001)) < 1e-15
    with pytest.raises(ProtocolError):
        LRSchedule(kind="cosine", total_steps=0)


# --- ledger -----------------------------------------------------------------------------------
def test_canonical_order_is_independent_of_arrival_order():
    records = [rec(step=s, machine=m, first=10 * s + (m == M2)) for s in range(5) for m in (M2, M1)]
    orders = []
    for seed in range(5):
        shuffled = records[:]
        random.Random(seed).shuffle(shuffled)
        orders.append(Ledger(shuffled).ordered())
    assert all(o == orders[0] for o in orders)
    assert [r.order_key for r in orders[0]] == sorted(r.order_key for r in records)
    assert [r.step for r in Ledger(records).ordered(since_step=2, until_step=4)] == [2, 2, 3, 3]


def test_ledger_conflicts_are_rejected_without_changing_state():
    ledger = Ledger([rec(first=0, grads=b"\x01\x02\x03")])
    assert ledger.add(rec(first=0, grads=b"\x01\x02\x03")) is False  # duplicate: ignored
    for bad in (rec(first=0, grads=b"\x05\x02\x03"), rec(first=2), rec(step=9, first=1, grads=b"\x01")):
        with pytest.raises(ProtocolError):
            ledger.add(bad)
    assert len(ledger) == 1 and ledger.next_sample(M1) == 3
    assert ledger.add(rec(first=3)) and ledger.add(rec(machine=M2, first=0))


def test_ledger_file_survives_a_torn_append(tmp_path):
    s = spec()
    path = tmp_path / "ledger.ssl"
    with LedgerFile(path, s) as lf:
        assert lf.append([rec(step=0), rec(step=1, first=2)]) == [rec(step=0), rec(step=1, first=2)]
        assert lf.append([rec(step=0)]) == []
    good = path.read_bytes()
    whole = encode_ledger(s, [rec(step=2, first=4)])
    torn_entry = whole[len(encode_ledger(s, [])):][:-3]  # a crash three bytes before the end of an append
    path.write_bytes(good + torn_entry)
    with LedgerFile(path, s) as lf:
        assert lf.repaired_bytes == len(torn_entry) and len(lf.ledger) == 2
        assert path.read_bytes() == good
        lf.append([rec(step=2, first=4)])
    spec2, records, torn = decode_ledger(path.read_bytes())
    assert spec2 == s and torn == 0 and [r.step for r in records] == [0, 1, 2]
    with pytest.raises(ProtocolError, match="belongs to swarm"):
        LedgerFile(path, spec(name="other"))


def test_ledger_bytes_roundtrip_and_bad_magic():
    s = spec()
    data = encode_ledger(s, [rec(), rec(machine=M2)])
    assert decode_ledger(data)[1] == [rec(), rec(machine=M2)]
    with pytest.raises(ProtocolError):
        decode_ledger(b"NOTALEDGER")


def test_ledger_file_rewrite_replaces_history_atomically(tmp_path):
    s = spec()
    with LedgerFile(tmp_path / "l.ssl", s) as lf:
        lf.append([rec(step=0), rec(step=1, first=2)])
        lf.rewrite([rec(step=0), rec(machine=M2)])
        lf.append([rec(step=2, first=5)])
    _, records, torn = decode_ledger((tmp_path / "l.ssl").read_bytes())
    assert sorted(r.order_key for r in records) == sorted(r.order_key for r in [rec(step=0), rec(machine=M2), rec(step=2, first=5)])
