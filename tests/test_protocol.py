"""Protocol v2: signed records, tickets, the swarm spec, the step rule, ledger set semantics
and file, link messages and votes. (Decoder robustness against arbitrary input: test_fuzz.py.)"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import math
import os
import random
from collections import defaultdict

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import seedswarm.protocol.ledger as ledger_module
from protocol_samples import AUTHORITY, F32, MEMBERS, OPEN, POW, RICH, A, B, C, D, Raw, enc, make_spec, \
    record, ticket, vote
from seedswarm.protocol import (Admission, Aggregation, CodecParams, Ledger, LedgerCorrupt, LedgerFile, LRSchedule,
                                ModelRef, ProtocolError, Record, Signer, SwarmSpec, TaskRef, decode_ledger,
                                decode_record, encode_ledger, parse_swarm_id, scan_ledger, step_gradients, step_terms)
from seedswarm.protocol.admission import check_record, check_records, check_vote
from seedswarm.protocol.aggregation import clip_bound
from seedswarm.protocol.canonical import MAX_DEPTH, pack, unpack_canonical
from seedswarm.protocol.identity import (MACHINE_PREFIX, POW_NONCE_BYTES, check_machine_id, check_ticket,
                                         issue_member_ticket, leading_zero_bits, machine_id, pow_digest, solve_pow)
from seedswarm.protocol.ledger import DUPLICATE, EQUIVOCATION, HEADER, NEW, REDUNDANT, DiskWriteError, entry
from seedswarm.protocol.messages import (MAX_BATCH, MAX_LEFT, MAX_MESSAGE_BYTES, MAX_RANGE, Bye, Gossip, Peers, RangeReply,
                                         RangeRequest, Status, Vote, Votes, decode_message, decode_vote,
                                         encode_message)
from seedswarm.protocol.records import MAX_RECORD_BYTES, MAX_SAMPLES, MAX_TICKET_BYTES
from seedswarm.protocol.spec import MAX_SPEC_BYTES
from seedswarm.protocol.util import f32

SWARM = OPEN.swarm_id
OTHER_SWARM = make_spec(name="other").swarm_id


def fields_of(r: Record, **changes) -> list:
    """The wire array of ``r`` with some fields changed (by name)."""
    f = dict(version=2, step=r.step, machine=r.machine, scale_exp=r.scale_exp, grads=r.grads, ticket=r.ticket,
             signature=r.signature)
    f.update(changes)
    return list(f.values())


def rejects(decoder, data, match: str | None = None) -> None:
    with pytest.raises(ProtocolError, match=match):
        decoder(data)


# --- records ----------------------------------------------------------------------------------------
def test_record_roundtrip_and_identity():
    r = record(A, 2**40, bytes([1, 127, 129, 255, 0]))
    data = r.encode()
    assert decode_record(data) == r and decode_record(data).signature == r.signature
    assert decode_record(bytearray(data)) == r and decode_record(memoryview(data)) == r
    assert r.verify(SWARM) is r
    assert r.samples(4) == range(2**42, 2**42 + 5) and r.n == 5
    assert r.slot == r.order_key == (2**40, A.machine)
    assert r.rid == hashlib.sha256(r.body).digest()[:16]
    assert r.body == pack([2, r.step, r.machine, r.scale_exp, r.grads, r.ticket])
    assert data == pack([2, r.step, r.machine, r.scale_exp, r.grads, r.ticket, r.signature])


def test_the_largest_record_has_exactly_the_size_bound():
    r = Record(step=2**64 - 1, machine=A.machine, scale_exp=64, grads=b"\x01" * MAX_SAMPLES,
               ticket=b"t" * MAX_TICKET_BYTES, signature=bytes(64))
    assert len(r.encode()) == MAX_RECORD_BYTES and decode_record(r.encode()) == r
    rejects(decode_record, r.encode() + b"\x00")


def test_record_signature_binds_the_swarm_and_every_field():
    r = record(A, 5, spec=MEMBERS)
    assert r.verify(MEMBERS.swarm_id)
    with pytest.raises(ProtocolError, match="bad signature"):
        r.verify(OPEN.swarm_id)
    changes = dict(step=6, machine=B.machine, scale_exp=4, grads=b"\x01\x03", ticket=ticket(MEMBERS, B),
                   signature=bytes(64))
    for name, value in changes.items():
        forged = dataclasses.replace(r, **{name: value})
        with pytest.raises(ProtocolError):
            forged.verify(MEMBERS.swarm_id)


def test_tampering_with_any_bit_of_a_record_breaks_it():
    r = record(A, 7, bytes(range(1, 9)))
    data = r.encode()
    for pos in range(len(data)):
        for bit in range(8):
            tampered = bytearray(data)
            tampered[pos] ^= 1 << bit
            try:
                decoded = decode_record(bytes(tampered))
            except ProtocolError:
                continue
            with pytest.raises(ProtocolError):
                decoded.verify(SWARM)


def _raw_int(byte: int, value: int, fmt: str) -> Raw:
    return Raw(bytes([byte]) + value.to_bytes(int(fmt), "big", signed=byte in (0xd0, 0xd1, 0xd2, 0xd3)))


NOT_ED25519 = [
    b"\x00\x24\x08\x00\x12\x20" + bytes(32),      # key type RSA
    b"\x00\x24\x08\x02\x12\x20" + bytes(32),      # key type secp256k1
    b"\x12\x20" + bytes(32),                      # a SHA-256 multihash peer id (RSA keys)
    b"\x00\x25\x08\x01\x12\x21" + bytes(33),      # 33-byte "key"
    A.machine[:-1], A.machine + b"\x00", b"", A.machine.hex().encode(),
]


@pytest.mark.parametrize("fields,why", [
    ([2, 0, A.machine, 3, b"\x01", b""], "6 fields"),
    ([2, 0, A.machine, 3, b"\x01", b"", bytes(64), 0], "8 fields"),
    ([1, 0, A.machine, 3, b"\x01", b"", bytes(64)], "old version"),
    ([3, 0, A.machine, 3, b"\x01", b"", bytes(64)], "future version"),
    ([True, 0, A.machine, 3, b"\x01", b"", bytes(64)], "bool version"),
    ([2, True, A.machine, 3, b"\x01", b"", bytes(64)], "bool step"),
    ([2, 0, A.machine, False, b"\x01", b"", bytes(64)], "bool scale_exp"),
    ([2, -1, A.machine, 3, b"\x01", b"", bytes(64)], "negative step"),
    ([2, 0.0, A.machine, 3, b"\x01", b"", bytes(64)], "float step"),
    ([2, 0, A.machine, 65, b"\x01", b"", bytes(64)], "scale exponent too large"),
    ([2, 0, A.machine, 3, b"", b"", bytes(64)], "no gradients"),
    ([2, 0, A.machine, 3, b"\x01" * (MAX_SAMPLES + 1), b"", bytes(64)], "too many gradients"),
    ([2, 0, A.machine, 3, b"\x01\x80", b"", bytes(64)], "invalid code 0x80"),
    ([2, 0, A.machine, 3, [1], b"", bytes(64)], "gradients as a list"),
    ([2, 0, A.machine, 3, "\x01", b"", bytes(64)], "gradients as str"),
    ([2, 0, A.machine, 3, b"\x01", b"t" * (MAX_TICKET_BYTES + 1), bytes(64)], "ticket too long"),
    ([2, 0, A.machine, 3, b"\x01", None, bytes(64)], "nil ticket"),
    ([2, 0, A.machine, 3, b"\x01", b"", bytes(63)], "short signature"),
    ([2, 0, A.machine.hex(), 3, b"\x01", b"", bytes(64)], "machine as str"),
    ({"step": 0}, "a map"),
] + [([2, 0, m, 3, b"\x01", b"", bytes(64)], f"machine id not Ed25519 {i}") for i, m in enumerate(NOT_ED25519)])
def test_malformed_records_are_protocol_errors(fields, why):
    rejects(decode_record, enc(fields))
    if isinstance(fields, list) and len(fields) == 7 and fields[0] == 2:
        with pytest.raises(ProtocolError):
            Record(*fields[1:])


def test_records_must_be_canonical_msgpack():
    r = record(A, 3)
    f = fields_of(r)
    assert enc(f) == r.encode()
    non_canonical = [
        enc(fields_of(r, step=_raw_int(0xcc, 3, "1"))),                        # uint8 for a fixint
        enc(fields_of(r, step=_raw_int(0xcd, 3, "2"))),                        # uint16
        enc(fields_of(r, step=_raw_int(0xd0, 3, "1"))),                        # int8
        enc(fields_of(r, version=_raw_int(0xcf, 2, "8"))),                     # uint64 version
        enc(fields_of(r, grads=Raw(b"\xc5\x00\x02" + r.grads))),               # bin16 for 2 bytes
        enc(fields_of(r, grads=Raw(b"\xa2" + r.grads))),                       # str (raw) for bin
        enc(fields_of(r, step=F32(3.0))),                                      # float32
        enc(fields_of(r, step=3.0)),                                           # float64
        Raw(b"\xdc\x00\x07").data + r.encode()[1:],                            # array16 header
        r.encode() + b"\x00",                                                  # trailing bytes
        r.encode() + r.encode(),
        r.encode()[:-1],                                                       # truncated
    ]
    for data in non_canonical:
        rejects(decode_record, data)
    rejects(decode_record, "not bytes")
    rejects(decode_record, None)
    rejects(decode_record, bytes(MAX_RECORD_BYTES + 1), "exceeds")


# --- tickets --------------------------------------------------------------------------------------
def test_machine_ids_are_ed25519_peer_ids():
    assert A.machine == MACHINE_PREFIX + A.public_key and len(A.machine) == 38
    assert machine_id(A.public_key) == A.machine and check_machine_id(A.machine) is A.machine
    assert Signer(A.seed).machine == A.machine and "seed" not in repr(A) and A.seed.hex() not in repr(A)
    for bad in NOT_ED25519 + [None, A.machine.hex(), bytearray(A.machine)]:
        with pytest.raises(ProtocolError):
            check_machine_id(bad)
    with pytest.raises(ProtocolError):
        machine_id(b"\x00" * 31)


@pytest.mark.parametrize("bits", [0, 1, 4, 10])
def test_proof_of_work_tickets(bits):
    nonce = solve_pow(SWARM, A.machine, bits)
    assert len(nonce) == POW_NONCE_BYTES and leading_zero_bits(pow_digest(SWARM, A.machine, nonce)) >= bits
    if bits:
        check_ticket("open", bits, b"", SWARM, A.machine, nonce)
        # the nonce is worth nothing for another machine or another swarm, nor with more bits
        weaker = [leading_zero_bits(pow_digest(s, m, nonce)) for s, m in ((SWARM, B.machine), (OTHER_SWARM, A.machine))]
        for (swarm, machine), zeros in zip(((SWARM, B.machine), (OTHER_SWARM, A.machine)), weaker):
            if zeros < bits:
                with pytest.raises(ProtocolError, match="proof of work"):
                    check_ticket("open", bits, b"", swarm, machine, nonce)
        for bad in (b"", nonce[:-1], nonce + b"\x00"):
            with pytest.raises(ProtocolError):
                check_ticket("open", bits, b"", SWARM, A.machine, bad)
    else:
        check_ticket("open", 0, b"", SWARM, A.machine, b"")
        with pytest.raises(ProtocolError, match="no admission ticket"):
            check_ticket("open", 0, b"", SWARM, A.machine, b"\x00" * 8)
    with pytest.raises(ValueError):
        solve_pow(SWARM, A.machine, 33)


def test_leading_zero_bits():
    assert leading_zero_bits(bytes(32)) == 256
    assert leading_zero_bits(b"\x80" + bytes(31)) == 0
    assert leading_zero_bits(b"\x00\x01" + bytes(30)) == 15


def test_member_tickets():
    key, swarm = AUTHORITY.public_key, MEMBERS.swarm_id
    t = issue_member_ticket(AUTHORITY, swarm, A.machine)
    check_ticket("members", 0, key, swarm, A.machine, t)
    bad = [(key, swarm, B.machine, t),                                              # another machine
           (key, OPEN.swarm_id, A.machine, t),                                      # another swarm
           (key, swarm, A.machine, issue_member_ticket(C, swarm, A.machine)),       # not the authority
           (key, swarm, A.machine, b""), (key, swarm, A.machine, t[:-1]),
           (C.public_key, swarm, A.machine, t)]
    for args in bad:
        with pytest.raises(ProtocolError):
            check_ticket("members", 0, *args)
    with pytest.raises(ProtocolError):
        issue_member_ticket(AUTHORITY, swarm, b"not a machine")


@pytest.mark.parametrize("spec", [OPEN, POW, MEMBERS], ids=["open", "pow", "members"])
def test_admission_of_records_and_votes(spec):
    r = record(A, 3, spec=spec)
    assert check_record(spec, r) is r
    assert check_records(spec, [r, record(B, 3, spec=spec)]) == [r, record(B, 3, spec=spec)]
    v = vote(A, spec=spec)
    assert check_vote(spec, v) is v
    with pytest.raises(ProtocolError, match="exactly 2"):
        check_record(spec, record(A, 3, b"\x01", spec=spec))
    with pytest.raises(ProtocolError, match="exactly 2"):
        check_record(spec, record(A, 3, b"\x01\x02\x03", spec=spec))
    with pytest.raises(ProtocolError, match="record 1"):
        check_records(spec, [r, record(A, 3, b"\x01", spec=spec)])
    largest = (2**64) // spec.samples_per_step - 1  # the last step whose sample counters fit in 64 bits
    assert check_record(spec, record(A, largest, spec=spec))
    with pytest.raises(ProtocolError, match="overflow"):
        check_record(spec, record(A, largest + 1, spec=spec))
    other = make_spec(name="other", admission=spec.admission)
    with pytest.raises(ProtocolError):  # signed (and ticketed) for another swarm
        check_record(spec, record(A, 3, spec=other))
    with pytest.raises(ProtocolError):
        check_vote(spec, vote(A, spec=other))
    if spec is not OPEN:  # a ticket is required
        with pytest.raises(ProtocolError):
            check_record(spec, record(A, 3, spec=spec, with_ticket=False))
        with pytest.raises(ProtocolError):
            check_vote(spec, Vote.create(A, spec.swarm_id, 1, bytes(32)))
        stolen = Record.create(B, spec.swarm_id, 3, 3, b"\x01\x02", ticket(spec, A))  # A's ticket on B's record
        with pytest.raises(ProtocolError):
            check_record(spec, stolen)


# --- the swarm spec ------------------------------------------------------------------------------------
def test_swarm_id_is_content_addressed():
    a = make_spec()
    assert a.swarm_id == make_spec().swarm_id == hashlib.sha256(b"seedswarm/spec/v2\x00" + a.canonical_bytes()).digest()
    assert SwarmSpec.from_canonical(a.canonical_bytes(), a.swarm_id) == a
    assert SwarmSpec.from_json(a.to_json()) == a and SwarmSpec.from_dict(a.to_dict()) == a
    assert SwarmSpec.from_json(RICH.to_json()) == RICH and SwarmSpec.from_canonical(RICH.canonical_bytes()) == RICH
    variants = [make_spec(eps=2e-3), make_spec(lr=LRSchedule(base=2e-4)), make_spec(codec=CodecParams(clip=8.0)),
                make_spec(name="t"), make_spec(task=TaskRef("label-prompts", {"prompts": ["a", "c"]})),
                make_spec(trainable=("*bias",)), make_spec(frozen=("*x",)), make_spec(perturbation="gaussian"),
                make_spec(model=ModelRef("m", digest="0" * 64)), make_spec(model=ModelRef("m", dtype="float16")),
                make_spec(weight_decay=0.1), make_spec(no_decay=()), make_spec(samples_per_step=3),
                make_spec(batch_size=4), make_spec(digest_every=3), make_spec(delay=2), make_spec(late_window=2),
                make_spec(future_window=9), make_spec(aggregation=Aggregation("none")),
                make_spec(aggregation=Aggregation(clip_factor=3.0)), POW, MEMBERS]
    assert len({v.swarm_id for v in variants} | {a.swarm_id}) == len(variants) + 1
    with pytest.raises(ProtocolError, match="does not hash"):
        SwarmSpec.from_canonical(a.canonical_bytes(), POW.swarm_id)
    with pytest.raises(ProtocolError):
        parse_swarm_id("abc")
    assert parse_swarm_id(" " + a.swarm_id_hex.upper() + "\n") == a.swarm_id


def test_spec_map_order_does_not_matter_but_noncanonical_bytes_are_rejected():
    a = make_spec(task=TaskRef("k", {"b": 1, "a": [1, 2]}))
    b = make_spec(task=TaskRef("k", {"a": [1, 2], "b": 1}))
    assert a.swarm_id == b.swarm_id and a.canonical_bytes() == b.canonical_bytes()
    raw = msgpack.unpackb(a.canonical_bytes())
    unsorted = msgpack.packb(dict(reversed(list(raw.items()))), use_bin_type=True)
    assert SwarmSpec.from_dict(msgpack.unpackb(unsorted)) == a
    rejects(SwarmSpec.from_canonical, unsorted, "canonical")
    rejects(SwarmSpec.from_canonical, a.canonical_bytes() + b"\xc0")
    rejects(SwarmSpec.from_canonical, enc({**a.to_dict(), "eps": F32(0.5)}), "canonical")
    rejects(SwarmSpec.from_canonical, a.canonical_bytes()[:-1])
    rejects(SwarmSpec.from_canonical, bytes(MAX_SPEC_BYTES + 1), "exceeds")
    rejects(SwarmSpec.from_canonical, a.to_json())  # text, not bytes


def test_integer_spellings_of_float_fields_widen_in_json_but_not_in_canonical_bytes():
    d = make_spec(eps=1.0, weight_decay=0.0, codec=CodecParams(clip=8.0), aggregation=Aggregation(clip_factor=2.0),
                  lr=LRSchedule(base=1.0, kind="linear", total_steps=10, min_ratio=0.0)).to_dict()
    widened = {**d, "eps": 1, "weight_decay": 0, "codec": {**d["codec"], "clip": 8},
               "aggregation": {**d["aggregation"], "clip_factor": 2}, "lr": {**d["lr"], "base": 1, "min_ratio": 0}}
    spec = SwarmSpec.from_dict(d)
    assert SwarmSpec.from_dict(widened) == spec and SwarmSpec.from_dict(widened).swarm_id == spec.swarm_id
    import json
    assert SwarmSpec.from_json(json.dumps(widened)).swarm_id == spec.swarm_id
    assert type(SwarmSpec.from_dict(widened).eps) is float
    for key in ("eps", "weight_decay"):  # the canonical bytes must hold floats
        rejects(SwarmSpec.from_canonical, pack({**d, key: int(d[key])}), "canonical")
    rejects(SwarmSpec.from_canonical, pack({**widened}), "canonical")
    # never the other way round, and booleans are not numbers
    for key, value in [("samples_per_step", 2.0), ("batch_size", 32.0), ("delay", True), ("eps", True),
                       ("protocol_version", 2.0), ("protocol_version", True)]:
        with pytest.raises(ProtocolError):
            SwarmSpec.from_dict({**d, key: value})
    with pytest.raises(ProtocolError):
        SwarmSpec.from_dict({**d, "admission": {"mode": "open", "pow_bits": 4.0, "authority": ""}})
    with pytest.raises(ProtocolError, match="float range"):
        SwarmSpec.from_dict({**d, "eps": 10**400})


AUTHORITY_HEX = AUTHORITY.public_key.hex()


@pytest.mark.parametrize("bad,match", [
    (dict(name=""), "name"), (dict(name="x" * 201), "name"), (dict(name=3), "name"),
    (dict(model=ModelRef("")), "model.id"), (dict(model=ModelRef("m", digest="xyz")), "digest"),
    (dict(model=ModelRef("m", digest="AB" * 32)), "digest"), (dict(model=ModelRef("m", dtype="int8")), "dtype"),
    (dict(task=TaskRef("")), "task.kind"), (dict(task=TaskRef("k", [])), "options"),
    (dict(task=TaskRef("k", {"f": math.inf})), "finite"), (dict(task=TaskRef("k", {"f": math.nan})), "finite"),
    (dict(task=TaskRef("k", {"b": b"x"})), "JSON-like"), (dict(task=TaskRef("k", {1: "x"})), "string keys"),
    (dict(task=TaskRef("k", {"i": 2**64})), "64 bits"), (dict(task=TaskRef("k", {"t": (1, 2)})), "JSON-like"),
    (dict(task=TaskRef("k", {"d": [[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]})), "nests"),
    (dict(task=TaskRef("k", {"s": "\ud800"})), "surrogate"),
    (dict(task=TaskRef("k", {"big": "x" * MAX_SPEC_BYTES})), "exceeds"),
    (dict(trainable=()), "trainable"), (dict(trainable=("",)), "trainable"), (dict(trainable=["*"]), "trainable"),
    (dict(trainable=("*",) * 257), "trainable"), (dict(frozen=("x" * 201,)), "frozen"),
    (dict(no_decay=(1,)), "no_decay"),
    (dict(perturbation="uniform"), "perturbation"),
    (dict(eps=0.0), "eps"), (dict(eps=-1.0), "eps"), (dict(eps=math.nan), "eps"), (dict(eps=math.inf), "eps"),
    (dict(eps=1), "eps"), (dict(weight_decay=-0.1), "weight_decay"),
    (dict(codec=CodecParams(name="int4")), "codec.name"), (dict(codec=CodecParams(clip=0.0)), "codec.clip"),
    (dict(codec=CodecParams(clip=1e31)), "codec.clip"),
    (dict(aggregation=Aggregation("mean")), "aggregation.clip"),
    (dict(aggregation=Aggregation(clip_factor=0.0)), "clip_factor"),
    (dict(aggregation=Aggregation(clip_factor=1e7)), "clip_factor"),
    (dict(admission=Admission("closed")), "admission.mode"), (dict(admission=Admission(pow_bits=33)), "pow_bits"),
    (dict(admission=Admission(pow_bits=-1)), "pow_bits"), (dict(admission=Admission(pow_bits=True)), "pow_bits"),
    (dict(admission=Admission("members")), "authority"),
    (dict(admission=Admission("members", authority=AUTHORITY_HEX.upper())), "authority"),
    (dict(admission=Admission("members", authority=AUTHORITY_HEX[:-2])), "authority"),
    (dict(admission=Admission("members", pow_bits=4, authority=AUTHORITY_HEX)), "open swarms only"),
    (dict(admission=Admission("open", authority=AUTHORITY_HEX)), "members-only swarms only"),
    (dict(samples_per_step=0), "samples_per_step"), (dict(samples_per_step=MAX_SAMPLES + 1), "samples_per_step"),
    (dict(batch_size=0), "batch_size"), (dict(digest_every=0), "digest_every"),
    (dict(delay=-1), "delay"), (dict(delay=9, future_window=20), "delay"),
    (dict(late_window=-1), "late_window"), (dict(late_window=65), "late_window"),
    (dict(future_window=65), "future_window"), (dict(delay=1, future_window=2), "future_window"),
    (dict(delay=3, future_window=4), "future_window"), (dict(delay=0, future_window=1), "future_window"),
    (dict(protocol_version=1), "protocol"), (dict(protocol_version=3), "protocol"),
])
def test_spec_validation(bad, match):
    with pytest.raises(ProtocolError, match=match):
        make_spec(**bad)


def test_spec_validation_boundaries_that_hold():
    for ok in [dict(delay=0, future_window=2), dict(delay=3, future_window=5), dict(delay=8, future_window=64),
               dict(late_window=0), dict(late_window=64), dict(samples_per_step=MAX_SAMPLES),
               dict(trainable=("*",) * 256),
               dict(admission=Admission(pow_bits=32)), dict(task=TaskRef("k", {"d": [[[[[[[[[[[[[1]]]]]]]]]]]]]})),
               dict(codec=CodecParams(clip=1e30)), dict(aggregation=Aggregation(clip_factor=1e6)),
               dict(weight_decay=0.0)]:
        spec = make_spec(**ok)
        assert SwarmSpec.from_canonical(spec.canonical_bytes(), spec.swarm_id) == spec
    assert MEMBERS.authority_key == AUTHORITY.public_key


def test_spec_from_dict_and_json_are_strict():
    d = make_spec().to_dict()
    for bad, match in [({**d, "epsilon": 1.0}, "epsilon"), ({**d, "lr": {**d["lr"], "kind": "exp"}}, "kind"),
                       ({**d, "lr": {**d["lr"], "decay": 1.0}}, "decay"), ({**d, "model": "m"}, "model"),
                       ({**d, "task": {"options": {}}}, "task"), ({**d, "trainable": "*"}, "trainable"),
                       ({k: v for k, v in d.items() if k != "model"}, "model"), ([d], "mapping"),
                       ({**d, "admission": {**d["admission"], "mode": "members"}}, "authority")]:
        with pytest.raises(ProtocolError, match=match):
            SwarmSpec.from_dict(bad)
    for text in ["{not json", "", "[]", "null", "1" * 5000, b"\xff\xfe\x00", "[" * 100_000]:
        with pytest.raises(ProtocolError):
            SwarmSpec.from_json(text)
    with pytest.raises(ProtocolError):
        SwarmSpec.from_json(None)
    assert SwarmSpec.from_json(make_spec().to_json().encode()) == make_spec()


def test_lr_schedules():
    warm = LRSchedule(base=1.0, kind="cosine", warmup_steps=4, total_steps=14, min_ratio=0.0)
    assert [warm(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warm(4) == 1.0 and abs(warm(9) - 0.5) < 1e-15 and warm(14) == 0.0 and warm(100) == 0.0
    lin = LRSchedule(base=2.0, kind="linear", total_steps=10, min_ratio=0.5)
    assert lin(0) == 2.0 and lin(5) == 1.5 and lin(10) == 1.0
    from seedswarm.protocol.schedule import cos_pi
    assert max(abs(cos_pi(t / 1000) - math.cos(math.pi * t / 1000)) for t in range(1001)) < 1e-15
    for bad in [dict(kind="cosine", total_steps=0), dict(base=-1.0), dict(base=1), dict(min_ratio=2.0),
                dict(warmup_steps=-1), dict(kind="linear", warmup_steps=5, total_steps=5), dict(kind=["constant"])]:
        with pytest.raises(ProtocolError):
            LRSchedule(**bad)


# --- the step rule -------------------------------------------------------------------------------------
def test_median_clip_bound():
    median = make_spec(aggregation=Aggregation("median", 1.0))
    assert clip_bound(median, [1.0, -2.0, 3.0, -4.0]) == 2.0                    # the lower median
    assert clip_bound(median, [5.0, -1.0, 3.0]) == 3.0
    assert clip_bound(make_spec(aggregation=Aggregation("median", clip_factor=1.5)), [1.0, -2.0, 3.0, -4.0]) == 3.0
    assert clip_bound(make_spec(), [1.0, -2.0, 3.0, -4.0]) == 4.0  # the default: redescend, factor 2
    assert clip_bound(median, []) is None
    assert clip_bound(make_spec(aggregation=Aggregation("none")), [1.0, 2.0]) is None


def _spec_terms(**kw):
    return make_spec(codec=CodecParams(clip=64.0), lr=LRSchedule(base=0.01), weight_decay=0.5, **kw)


def test_one_hostile_record_moves_the_weights_no_more_than_the_median_honest_gradient():
    spec = _spec_terms(aggregation=Aggregation("median", 1.0))
    honest = [record(A, 4, bytes([10, 246]), exp=2, spec=spec), record(B, 4, bytes([20, 5]), exp=2, spec=spec)]
    hostile = record(C, 4, bytes([0x81, 0x81]), exp=0, spec=spec)  # -127 at the largest scale: -64.0 each
    assert hostile.values(64.0) == [-64.0, -64.0]
    records = honest + [hostile]
    decoded = [v for r in records for v in r.values(64.0)]
    bound = sorted(abs(v) for v in decoded)[(len(decoded) - 1) // 2]
    clipped = dict(zip((r.machine for r in records), step_gradients(spec, records)))
    assert clipped[C.machine] == [-bound, -bound]
    for r in honest:
        assert clipped[r.machine] == [v if abs(v) <= bound else math.copysign(bound, v) for v in r.values(64.0)]
    assert all(abs(g) <= bound for gs in clipped.values() for g in gs)
    unclipped = step_gradients(make_spec(codec=CodecParams(clip=64.0), aggregation=Aggregation("none")), records)
    assert unclipped == [r.values(64.0) for r in records]


def test_update_terms_are_exact_and_independent_of_record_order():
    from seedswarm.protocol.hashing import derive_seed
    spec = _spec_terms(aggregation=Aggregation(clip_factor=2.0))
    records = [record(s, 9, bytes([i + 1, 256 - 3 * i - 1]), exp=i % 3, spec=spec) for i, s in enumerate((A, B, C, D))]
    terms = step_terms(spec, records)
    for order in range(5):
        shuffled = records[:]
        random.Random(order).shuffle(shuffled)
        assert step_terms(spec, shuffled) == terms
    ordered = sorted(records, key=lambda r: r.machine)
    grads = step_gradients(spec, ordered)
    expected = [(derive_seed(spec.swarm_id, r.machine, sample), f32(-(0.01 * g)), f32(1.0 - 0.01 * 0.5))
                for r, gs in zip(ordered, grads) for sample, g in zip(r.samples(2), gs)]
    assert [(t.seed, t.coef, t.decay) for t in terms] == expected
    assert all(t.coef == f32(t.coef) for t in terms)
    with pytest.raises(ValueError):
        step_terms(spec, [record(A, 1, spec=spec), record(B, 2, spec=spec)])
    assert step_terms(spec, []) == []


# --- ledger set semantics ------------------------------------------------------------------------------
def test_duplicates_are_recognised_by_body():
    r = record(A, 0)
    ledger = Ledger([r])
    assert ledger.add(r) == DUPLICATE
    resigned = Record(r.step, r.machine, r.scale_exp, r.grads, r.ticket, signature=bytes(64))
    assert ledger.add(resigned) == DUPLICATE and len(ledger) == 1 and r in ledger and ledger.has(r.rid)
    assert ledger.applicable(0) == [r]


def test_an_equivocation_voids_that_step_of_that_machine_only():
    early, first = record(A, 1), record(A, 3, b"\x01\x02")
    second, third = record(A, 3, b"\x05\x06"), record(A, 3, b"\x07\x07")
    later, others = record(A, 5), [record(B, 3), record(B, 5), record(C, 1)]
    ledger = Ledger([early, first, later] + others)
    assert ledger.applicable(3) == sorted([first, others[0]], key=lambda r: r.machine)  # cached before the evidence
    assert ledger.add(second) == EQUIVOCATION and ledger.equivocated(3, A.machine)
    assert ledger.add(third) == REDUNDANT and third not in ledger
    assert ledger.applicable(1) == sorted([early, others[2]], key=lambda r: r.machine)
    assert ledger.applicable(3) == [others[0]]
    assert ledger.applicable(5) == sorted([later, others[1]], key=lambda r: r.machine)  # other steps unaffected
    assert sorted(ledger.at(3), key=lambda r: r.rid) == sorted([first, second, others[0]], key=lambda r: r.rid)
    assert ledger.slot(3, A.machine) == [first, second] and len(ledger) == 7
    assert ledger.equivocators() == {A.machine: 3} and not ledger.equivocated(3, B.machine)
    assert ledger.add(record(A, 1, b"\x09\x09")) == EQUIVOCATION and ledger.equivocators() == {A.machine: 1}
    assert ledger.applicable(1) == [others[2]]


def test_canonical_order_is_by_step_then_machine_id_bytes():
    records = [record(s, step) for step in range(4) for s in (D, C, B, A)]
    ledger = Ledger(reversed(records))
    assert [r.order_key for r in ledger.ordered()] == sorted(r.order_key for r in records)
    assert [r.step for r in ledger.ordered(since_step=1, until_step=3)] == [1] * 4 + [2] * 4
    assert ledger.steps() == [0, 1, 2, 3] and ledger.last_step == 3 and Ledger().last_step == -1
    assert [r.machine for r in ledger.applicable(2)] == sorted(s.machine for s in (A, B, C, D))


POOL = [record(s, step, bytes([1 + variant, 2])) for s in (A, B, C) for step in range(4) for variant in range(3)]


def reference_applicable(records: list[Record], step: int) -> list[Record]:
    """SPEC section 8 written out directly: one body per (step, machine); a machine with two
    bodies at ``step`` contributes nothing at ``step``."""
    bodies = defaultdict(dict)
    for r in records:
        bodies[r.slot][r.rid] = r
    return sorted((next(iter(held.values())) for (s, m), held in bodies.items() if s == step and len(held) == 1),
                  key=lambda r: r.machine)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(POOL), max_size=30).flatmap(lambda rs: st.tuples(st.just(rs), st.permutations(rs))))
def test_applicable_records_do_not_depend_on_arrival_order(orders):
    records, permuted = orders
    a, b = Ledger(records), Ledger()
    for r in permuted:
        b.add(r)
        b.applicable(r.step)  # exercise the cache while records arrive
    for step in range(4):
        assert a.applicable(step) == b.applicable(step) == reference_applicable(records, step)
    assert a.equivocators() == b.equivocators()


# --- ledger file ---------------------------------------------------------------------------------------
LEDGER_RECORDS = [record(s, step) for step in range(3) for s in (A, B)]


def written(tmp_path, records=LEDGER_RECORDS, spec=OPEN):
    path = tmp_path / "ledger.ssl"
    with LedgerFile(path, spec) as lf:
        assert [outcome for _, outcome in lf.add(records)] == [NEW] * len(records)
    return path


def entry_offsets(data: bytes) -> list[int]:
    """Offsets of every entry (the spec's first)."""
    pos, out = len(HEADER), []
    while pos < len(data):
        out.append(pos)
        pos += 8 + int.from_bytes(data[pos:pos + 4], "little")
    return out


def test_ledger_bytes_roundtrip_and_bad_headers():
    data = encode_ledger(OPEN, LEDGER_RECORDS)
    assert decode_ledger(data) == (OPEN, LEDGER_RECORDS, 0)
    assert data.startswith(b"SSLEDGER\x02") and data[9:].startswith(entry(OPEN.canonical_bytes()))
    for bad in [b"NOTALEDGER", b"SSLEDGER\x01" + data[9:], data[:9], data[:20], "text", HEADER + entry(b"\xc0")]:
        with pytest.raises(ProtocolError):
            decode_ledger(bad)


def test_ledger_file_keeps_records_and_reports_outcomes(tmp_path):
    path = written(tmp_path)
    with LedgerFile(path, OPEN) as lf:
        assert len(lf.ledger) == len(LEDGER_RECORDS) and lf.repaired_bytes == 0 and lf.damage == []
        assert lf.add(LEDGER_RECORDS) == []
        twin = record(A, 1, b"\x03\x04")
        changed = lf.add([twin, twin, record(A, 1, b"\x05\x05"), record(C, 1)])
        assert changed == [(twin, EQUIVOCATION), (record(C, 1), NEW)]
        assert lf.ledger.equivocators() == {A.machine: 1}
    spec, records, torn = decode_ledger(path.read_bytes())
    assert spec == OPEN and torn == 0 and records == LEDGER_RECORDS + [twin, record(C, 1)]
    with pytest.raises(ProtocolError, match="belongs to swarm"):
        LedgerFile(path, POW)


def test_a_torn_tail_is_trimmed_silently(tmp_path):
    path = written(tmp_path)
    good = path.read_bytes()
    last = entry(record(C, 3).encode())
    for cut in range(1, len(last)):
        path.write_bytes(good + last[:cut])
        with LedgerFile(path, OPEN) as lf:
            assert lf.repaired_bytes == cut and lf.damage == [] and len(lf.ledger) == len(LEDGER_RECORDS)
        assert path.read_bytes() == good
    with LedgerFile(path, OPEN) as lf:
        lf.add([record(C, 3)])
    assert decode_ledger(path.read_bytes())[1] == LEDGER_RECORDS + [record(C, 3)]


def test_a_bit_flip_in_the_middle_is_named_and_what_follows_recovered(tmp_path):
    path = written(tmp_path)
    good = path.read_bytes()
    offsets = entry_offsets(good)
    damaged_at, next_entry = offsets[3], offsets[4]  # the entry of LEDGER_RECORDS[2]
    for pos in range(damaged_at, next_entry):  # a flip anywhere in the entry: length, CRC or payload
        flipped = bytearray(good)
        flipped[pos] ^= 0x10
        scan = scan_ledger(bytes(flipped))
        assert scan.damage and scan.damage[0][0] == damaged_at, pos
        assert scan.records == LEDGER_RECORDS[:2] + LEDGER_RECORDS[3:] and scan.recovered_after_damage == 3
        assert scan.step_before_damage == LEDGER_RECORDS[1].step and scan.torn_bytes == 0
    flipped = bytearray(good)
    flipped[damaged_at + 20] ^= 0x01
    path.write_bytes(bytes(flipped))
    with pytest.raises(LedgerCorrupt, match=f"offset {damaged_at} ") as info:
        decode_ledger(bytes(flipped))
    assert info.value.damage == [(damaged_at, next_entry - damaged_at)] and info.value.recovered == 3
    with pytest.raises(LedgerCorrupt, match=f"{path}: corrupt ledger entries at offset {damaged_at}"):
        LedgerFile(path, OPEN)
    assert path.read_bytes() == bytes(flipped)  # refusing leaves the file alone
    with LedgerFile(path, OPEN, recover=True) as lf:
        assert lf.damage == [(damaged_at, next_entry - damaged_at)] and lf.step_before_damage == 0
        assert list(lf.ledger) == sorted(LEDGER_RECORDS[:2] + LEDGER_RECORDS[3:], key=lambda r: (r.order_key, r.rid))
        lf.add([LEDGER_RECORDS[2]])  # re-fetched from a peer
    assert (tmp_path / "ledger.ssl.damaged").read_bytes() == bytes(flipped)
    spec, records, torn = decode_ledger(path.read_bytes())
    assert torn == 0 and Ledger(records).ordered() == Ledger(LEDGER_RECORDS).ordered()


def test_a_recovery_that_cannot_write_keeps_the_damaged_file(tmp_path, monkeypatch):
    path = written(tmp_path)
    data = bytearray(path.read_bytes())
    data[entry_offsets(bytes(data))[3] + 20] ^= 0x01
    path.write_bytes(bytes(data))
    real = ledger_module.write_atomically

    def full_disk(target, payload):
        if target == path:
            raise DiskWriteError(errno.ENOSPC, "No space left on device")
        real(target, payload)
    monkeypatch.setattr(ledger_module, "write_atomically", full_disk)
    with pytest.raises(DiskWriteError):
        LedgerFile(path, OPEN, recover=True)
    assert path.read_bytes() == bytes(data)  # a restart finds the same damage, not an empty ledger
    monkeypatch.undo()
    with LedgerFile(path, OPEN, recover=True) as lf:
        assert len(lf.ledger) == len(LEDGER_RECORDS) - 1 and lf.damage


def test_damage_to_the_spec_entry_refuses_the_file(tmp_path):
    path = written(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(HEADER) + 12] ^= 0x01
    path.write_bytes(bytes(data))
    for recover in (False, True):
        with pytest.raises(ProtocolError, match="first entry"):
            LedgerFile(path, OPEN, recover=recover)


class FullDisk:
    """The ledger's open file, on a disk that fills up in the middle of a write."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(data[:len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.f, name)


def _fsync_fails_once(monkeypatch):
    real, failed = os.fsync, []

    def fsync(fd):
        if not failed:
            failed.append(fd)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("failure", ["write", "fsync"])
def test_a_failed_append_leaves_the_file_intact_and_appendable(tmp_path, monkeypatch, failure):
    path = written(tmp_path)
    before = path.read_bytes()
    with LedgerFile(path, OPEN) as lf:
        if failure == "write":
            lf._file = FullDisk(lf._file)
        else:
            _fsync_fails_once(monkeypatch)
        with pytest.raises(DiskWriteError, match="cannot append") as info:
            lf.add([record(C, 3), record(D, 3)])
        assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
        assert path.read_bytes() == before and len(lf.ledger) == len(LEDGER_RECORDS)
        assert record(C, 3) not in lf.ledger
        monkeypatch.undo()
        assert [o for _, o in lf.add([record(C, 3), record(D, 3)])] == [NEW, NEW]
    assert decode_ledger(path.read_bytes()) == (OPEN, LEDGER_RECORDS + [record(C, 3), record(D, 3)], 0)


def test_rewrite_is_atomic(tmp_path, monkeypatch):
    path = written(tmp_path)
    with LedgerFile(path, OPEN) as lf:
        lf.rewrite([record(B, 0), record(A, 0), record(A, 0)])
        lf.add([record(C, 1)])
        before = path.read_bytes()

        def no_space(*args):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(ledger_module.os, "replace", no_space)
        with pytest.raises(DiskWriteError):
            lf.rewrite([record(D, 0)])
        assert path.read_bytes() == before and not list(tmp_path.glob("*.tmp"))
    assert decode_ledger(before)[1] == Ledger([record(A, 0), record(B, 0)]).ordered() + [record(C, 1)]


# --- link messages and votes -------------------------------------------------------------------------------
def test_vote_roundtrip_and_signature():
    v = vote(A, 12, 3, spec=MEMBERS)
    assert decode_vote(v.encode()) == v and v.verify(MEMBERS.swarm_id) is v
    with pytest.raises(ProtocolError):
        v.verify(OPEN.swarm_id)
    for name, value in dict(step=13, digest=bytes(32), revision=4, machine=B.machine, ticket=b"",
                            signature=bytes(64)).items():
        with pytest.raises(ProtocolError):
            dataclasses.replace(v, **{name: value}).verify(MEMBERS.swarm_id)
    fields = [2, v.step, v.digest, v.revision, v.machine, v.ticket, v.signature]
    assert enc(fields) == v.encode()
    for i, bad in [(0, 1), (0, True), (1, -1), (1, True), (2, bytes(31)), (3, 1.0), (4, b"m"), (5, b"t" * 65),
                   (6, bytes(65))]:
        rejects(decode_vote, enc(fields[:i] + [bad] + fields[i + 1:]))
    rejects(decode_vote, enc(fields[:-1]))
    rejects(decode_vote, v.encode() + b"\x00")
    rejects(decode_vote, enc(fields[:5] + [b"t" * 200, fields[6]]), "exceeds")


MESSAGES = [Status(3, 1, 2, 150), Status(2**64 - 1, 0, 0, 0), Gossip((record(A, 1), record(B, 2)), (bytes(16),), ()),
            Gossip(), RangeRequest(0, MAX_RANGE), RangeRequest(5, 6),
            RangeReply(3, 5, True, (record(A, 3), record(B, 4))),
            RangeReply(7, 7, False, ()), Votes((vote(A), vote(B))), Peers((A.machine,), (B.machine,)), Bye(),
            Gossip((), (), (bytes(16),), ((A.machine, 12), (B.machine, 2**64 - 1)))]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_messages_roundtrip(msg):
    data = encode_message(msg)
    assert decode_message(data) == msg and encode_message(decode_message(data)) == data


def test_message_limits_and_range_bounds():
    r = record(A, 3).encode()
    many = [r] * (MAX_BATCH + 1)
    bad = [
        ["gossip", many, [], [], []], ["gossip", [], [bytes(16)] * (MAX_BATCH + 1), [], []], ["gossip", [], [bytes(15)], [], []],
        ["gossip", [], [], ["x" * 16], []], ["gossip", [b"junk"], [], [], []], ["gossip", [r], [], []], ["gossip", [r], [], [], [], []],
        ["range", 5, 5], ["range", 6, 5], ["range", 0, MAX_RANGE + 1], ["range", -1, 3], ["range", 0, True],
        ["ranged", 0, MAX_RANGE + 1, False, []], ["ranged", 5, 4, False, []], ["ranged", 0, 3, 1, []],
        ["ranged", 0, 3, False, [r]], ["ranged", 4, 9, False, [r]], ["ranged", 0, 3, False, many],
        ["status", 0, 2, 0, 0], ["status", 0, 0, 0, -1], ["status", True, 0, 0, 0], ["status", 0, 0, 0],
        ["votes", [vote(A).encode()] * (MAX_BATCH + 1)], ["votes", [r]],
        ["peers", [b"x"], []], ["peers", [A.machine.hex()], []], ["peers", [A.machine]],
        ["peers", [A.machine] * (MAX_BATCH + 1), []], ["peers", [], [A.machine] * (MAX_BATCH + 1)], ["bye", 0], ["hello"], [], [1], {"kind": "bye"}, "bye",
        ["gossip", [], [], [], [[A.machine, 3], [A.machine, 4]]], ["gossip", [], [], [], [[A.machine, -1]]],
        ["gossip", [], [], [], [[b"x", 3]]], ["gossip", [], [], [], [[A.machine]]], ["gossip", [], [], [], [A.machine]],
        ["gossip", [], [], [], [[Signer(i.to_bytes(32, "big")).machine, 3] for i in range(1, MAX_LEFT + 2)]],
        ["gossip", [], [], [], [[A.machine, True]]], ["gossip", [], [], [], [[A.machine, 3, 0]]], ["left", 3, [A.machine]],
    ]
    for obj in bad:
        rejects(decode_message, enc(obj))
    assert decode_message(enc(["ranged", 3, 4, False, [r]])) == RangeReply(3, 4, False, (record(A, 3),))
    assert decode_message(enc(["gossip", [r] * MAX_BATCH, [], [], []])).records == (record(A, 3),) * MAX_BATCH
    rejects(decode_message, bytes(MAX_MESSAGE_BYTES + 1), "exceeds")
    with pytest.raises(TypeError):
        encode_message("bye")


# --- canonical msgpack -------------------------------------------------------------------------------
def test_unpack_canonical_is_strict():
    value = {"a": [1, -1, 2**64 - 1, -(2**63), 1.5, "s", b"b", True, None, {"b": {}}], "b": math.nan}
    assert pack(unpack_canonical(pack(value), 1 << 10, "v")) == pack(value)
    nested = []
    for _ in range(MAX_DEPTH - 1):
        nested = [nested]
    assert unpack_canonical(pack(nested), 1 << 10, "v") == nested
    bad = [enc(Raw(b"\xcc\x01")), enc(Raw(b"\xd0\x01")), enc(Raw(b"\xd9\x01a")), enc(Raw(b"\xc5\x00\x01b")),
           enc(Raw(b"\xdc\x00\x01\x01")), enc(Raw(b"\xde\x00\x01\xa1a\x01")), enc(F32(1.5)),
           b"\x82\xa1b\x01\xa1a\x02",              # unsorted keys
           b"\x82\xa1a\x01\xa1a\x02",              # a duplicate key
           enc({1: 2}), enc({b"k": 1}), msgpack.packb(msgpack.ExtType(1, b"x")), b"\xd6\xff" + bytes(4),
           b"\xc1", b"\x01\x01", b"", b"\x91", b"\xa1\xff", enc([[[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]])]
    for data in bad:
        rejects(lambda d: unpack_canonical(d, 1 << 10, "v"), data)
    rejects(lambda d: unpack_canonical(d, 3, "v"), pack([1, 2, 3]), "exceeds")
    rejects(lambda d: unpack_canonical(d, 10, "v"), [1])


# --- name patterns (protocol/globs.py) ------------------------------------------------------------
import fnmatch as _fnmatch  # noqa: E402

from hypothesis import strategies as _st  # noqa: E402

from seedswarm.protocol import globs  # noqa: E402

_ALPHABET = "ab.c-]![?*"


@settings(max_examples=400, deadline=None)
@given(_st.text(_ALPHABET, min_size=1, max_size=8), _st.text("ab.c-]!", max_size=8))
def test_patterns_the_spec_accepts_match_exactly_as_fnmatch_does(pattern, name):
    try:
        globs.parse(pattern)
    except ProtocolError:
        return  # outside the language: refused by spec validation
    assert globs.match(name, pattern) == _fnmatch.fnmatchcase(name, pattern)


@pytest.mark.parametrize("pattern", ["[ab", "x[", "[]", "[!]", "[z-a]", ""])
def test_ambiguous_patterns_are_refused(pattern):
    with pytest.raises(ProtocolError):
        globs.parse(pattern)


def test_typical_parameter_patterns():
    assert globs.match("encoder.layer.0.attention.self.query.bias", "*bias")
    assert globs.match("encoder.layer.10.output.LayerNorm.weight", "*LayerNorm*")
    assert not globs.match("encoder.layer.0.attention.self.query.weight", "*bias")
    assert globs.match("layer.7.x", "layer.[0-9].*") and globs.match("layer.7.x", "layer.[!a-z].*")
    assert not globs.match("layer.a.x", "layer.[!a-z].*")


def test_encoded_size_of_gossip_frames_is_exact():
    from seedswarm.protocol.messages import Gossip, encode_message, encoded_size

    for n, h, w in [(0, 0, 0), (1, 2, 3), (20, 0, 1), (300, 300, 0)]:
        frame = Gossip(tuple(record(A, s) for s in range(n)), tuple(bytes([i % 256]) * 16 for i in range(h)),
                       tuple(bytes([i % 256]) * 16 for i in range(w)))
        assert encoded_size(frame) == len(encode_message(frame))


def test_redescend_counts_a_gradient_beyond_the_bound_less_the_further_out_it_is():
    spec = _spec_terms(aggregation=Aggregation("redescend", 2.0))
    honest = [record(A, 4, bytes([10, 246]), exp=2, spec=spec), record(B, 4, bytes([20, 5]), exp=2, spec=spec)]
    hostile = record(C, 4, bytes([0x81, 0x81]), exp=0, spec=spec)  # -64.0 each
    records = honest + [hostile]
    decoded = [v for r in records for v in r.values(64.0)]
    bound = 2.0 * sorted(abs(v) for v in decoded)[(len(decoded) - 1) // 2]
    out = dict(zip((r.machine for r in records), step_gradients(spec, records)))
    assert out[C.machine] == [-((bound * bound) / 64.0)] * 2  # almost nothing: bound^2 / |g|
    for r in honest:
        assert out[r.machine] == [v if abs(v) <= bound else math.copysign(bound * bound / abs(v), v)
                                  for v in r.values(64.0)]
    assert all(abs(g) <= bound for gs in out.values() for g in gs)


@given(st.lists(st.binary(min_size=1, max_size=3), max_size=40, unique=True), st.integers(1, 6), st.data())
def test_keys_every_member_could_write_keep_a_bounded_number_of_writers(ids, cap, data):
    """The spec key and the directory: peers arriving in any order, each reading before it
    writes, leave exactly min(cap, N) writers (a smaller id does not take a larger one's
    place); peers that raced past the cap (all writing on the same empty read) settle on the
    `cap` smallest of them once they see each other."""
    from seedswarm.protocol.directory import few_enough

    held: set[bytes] = set()
    for me in data.draw(st.permutations(ids)):
        if few_enough(me, held, cap):
            held.add(me)
    assert len(held) == min(cap, len(ids))
    assert all(few_enough(m, held, cap) for m in held)  # and they keep refreshing
    raced = set(ids)
    assert {m for m in raced if few_enough(m, raced, cap)} == set(sorted(raced)[:cap])
    latecomer = b"\x00"  # the smallest id there is, arriving once the cap is full
    if latecomer not in held:
        assert few_enough(latecomer, held, cap) == (len(held) < cap)
