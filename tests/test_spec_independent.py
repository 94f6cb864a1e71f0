"""Does protocol/SPEC.md alone determine a bit-compatible peer?

tests/independent/ssv2.py implements the protocol from SPEC.md only (no seedswarm import:
checked below). Here it is checked against the committed vectors (tests/vectors/
protocol_v2.json) and against the reference implementation on random inputs (hypothesis),
including inputs either side must reject. Where the two disagreed while this was written,
SPEC.md was made precise (or the disagreement reported as a code bug).
"""

from __future__ import annotations

import ast
import fnmatch
import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from independent import ssv2

ROOT = Path(__file__).resolve().parent.parent
V = json.loads((ROOT / "tests" / "vectors" / "protocol_v2.json").read_text())
TABLE = ssv2.Table(ROOT / "protocol" / "gaussian4096.f32")
FULL, FULL_BYTES, FULL_ID = ssv2.spec_from_json(V["spec_full"]["json"])
d_hex = lambda x: struct.pack(">d", x).hex()  # noqa: E731
h = lambda s: int(s, 16)  # noqa: E731
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ============================================================== the independence itself
def test_the_independent_implementation_imports_no_seedswarm():
    tree = ast.parse((ROOT / "tests" / "independent" / "ssv2.py").read_text())
    imported = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "hashlib", "json", "math", "struct", "zlib", "cryptography"}, imported
    code = ("import sys; sys.path.insert(0, 'tests'); import independent.ssv2; "
            "print(sorted(m for m in sys.modules if m.startswith('seedswarm')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ============================================================== against the vectors
def test_hashing_and_identity_vectors():
    v = V["hashing"]
    assert ssv2.stream64(0, 0) == h(v["splitmix64_seed0_first_output"])
    assert all(ssv2.mix64(h(x)) == h(y) for x, y in v["mix64"].items())
    assert all(ssv2.stream64(h(r["key"]), r["counter"]) == h(r["out"]) for r in v["stream64"])
    assert ssv2.blake2b64(ssv2.CODEC, b"") == h(v["codec_salt"])
    assert all(ssv2.tensor_id(n) == h(x) for n, x in v["tensor_id"].items())
    assert all(ssv2.tensor_key(h(r["seed"]), r["name"]) == h(r["key"]) for r in v["tensor_key"])
    for r in v["seed"]:
        assert ssv2.seed(bytes.fromhex(r["swarm_id"]), bytes.fromhex(r["machine"]), r["sample"]) == h(r["seed"])
    for r in V["identity"]:
        assert ssv2.machine_of_seed(bytes.fromhex(r["seed"])) == (bytes.fromhex(r["public_key"]), bytes.fromhex(r["machine"]))


@pytest.mark.parametrize("dist", ["rademacher", "gaussian"])
def test_z_vectors(dist):
    z = V["z"]
    assert [ssv2.z(dist, h(z["key"]), i, TABLE) for i in z["indices"]] == z[dist]
    if dist == "gaussian":
        assert [ssv2.f32_hex(x) for x in z[dist]] == z["gaussian_hex"]


def test_codec_vectors():
    c = V["codec"]
    for row in c["encode"]:
        assert ssv2.encode_grads(row["grads"], [h(s) for s in row["seeds"]], c["clip"]) == (
            bytes.fromhex(row["codes"]), row["scale_exp"])
    for row in c["decode"]:
        assert [d_hex(x) for x in ssv2.decode_grads(bytes.fromhex(row["codes"]), row["scale_exp"], c["clip"])] == row["values_hex"]
    with pytest.raises(ssv2.Invalid):
        ssv2.decode_grads(bytes.fromhex(c["invalid_byte"]), 0, c["clip"])
    for bad in c["refused"]:
        with pytest.raises(ssv2.Invalid):
            ssv2.encode_grads([float(bad)], [1], c["clip"])


def test_cos_pi_and_lr_vectors():
    assert all(d_hex(ssv2.cos_pi(r["t"])) == r["value_hex"] for r in V["cos_pi"])
    for case in V["lr"].values():
        for row in case["values"]:
            assert d_hex(ssv2.lr(case["schedule"], row["step"])) == row["lr_hex"], (case["schedule"], row["step"])


def test_spec_vectors():
    for name in ("spec_full", "spec_minimal", "spec_widened"):
        _, data, sid = ssv2.spec_from_json(V[name]["json"])
        assert (data.hex(), sid.hex()) == (V[name]["canonical"], V[name]["swarm_id"])
        assert ssv2.spec_from_canonical(data)[1] == sid
    assert ssv2.spec_from_json(V["spec_widened"]["same_as_json"])[2].hex() == V["spec_widened"]["swarm_id"]
    assert ssv2.canonical_map(ssv2.spec_from_json(V["spec_minimal"]["json"])[0]) == V["spec_minimal"]["filled"]
    with pytest.raises(ssv2.Invalid):
        ssv2.spec_from_canonical(bytes.fromhex(V["spec_rejected"]["canonical"]))
    o = V["spec_int_in_options"]
    assert ssv2.spec_from_json(o["int_json"])[2].hex() == o["int_swarm_id"]
    assert ssv2.spec_from_json(o["float_json"])[2].hex() == o["float_swarm_id"]


def test_record_vote_and_ticket_vectors():
    r = V["record"]
    rec = ssv2.decode_record(bytes.fromhex(r["encoded"]))
    assert (rec.body.hex(), rec.rid.hex(), rec.signed_message(FULL_ID).hex()) == (r["body"], r["rid"], r["signed_message"])
    assert ssv2.admissible(FULL, FULL_ID, rec)
    again = ssv2.make_record(bytes.fromhex(r["signer_seed"]), FULL_ID, r["step"], r["scale_exp"],
                             bytes.fromhex(r["grads"]), bytes.fromhex(r["ticket"]))
    assert again.encode().hex() == r["encoded"]
    n = FULL["samples_per_step"]
    assert [f"{ssv2.seed(FULL_ID, rec.machine, rec.step * n + j):016x}" for j in range(n)] == r["seeds"]
    v = V["vote"]
    step, digest, rev, machine, ticket, sig = ssv2.decode_vote(bytes.fromhex(v["encoded"]))
    body = ssv2.vote_body(step, digest, rev, machine, ticket)
    assert body.hex() == v["body"] and (ssv2.VOTE + FULL_ID + body).hex() == v["signed_message"]
    assert ssv2.verify(machine[6:], ssv2.VOTE + FULL_ID + body, sig) and ssv2.ticket_ok(FULL, FULL_ID, machine, ticket)
    p = V["tickets"]["pow"]
    assert ssv2.ticket_ok(FULL, bytes.fromhex(p["swarm_id"]), bytes.fromhex(p["machine"]), bytes.fromhex(p["nonce"]))
    assert ssv2.leading_zero_bits(bytes.fromhex(p["digest"])) == p["leading_zero_bits"]
    m = V["tickets"]["member"]
    spec, _, sid = ssv2.spec_from_json(m["spec_json"])
    assert sid.hex() == m["swarm_id"]
    assert ssv2.ticket_ok(spec, sid, bytes.fromhex(m["machine"]), bytes.fromhex(m["ticket"]))
    assert not ssv2.ticket_ok(spec, FULL_ID, bytes.fromhex(m["machine"]), bytes.fromhex(m["ticket"]))


def test_step_vectors():
    s = V["step"]
    records = [ssv2.decode_record(bytes.fromhex(x)) for x in s["records"]]
    assert [r.machine.hex() for r in sorted(records, key=lambda r: r.machine)] == s["canonical_order"]
    terms = ssv2.step_terms(FULL, FULL_ID, records)
    assert [(f"{a:016x}", ssv2.f32_hex(b), ssv2.f32_hex(c)) for a, b, c in terms] == [
        (t["seed"], t["coef_hex"], t["decay_hex"]) for t in s["terms"]]
    z = V["step_zero_median"]
    spec, _, sid = ssv2.spec_from_json(z["spec_json"])
    terms = ssv2.step_terms(spec, sid, [ssv2.decode_record(bytes.fromhex(x)) for x in z["records"]])
    assert [(f"{a:016x}", ssv2.f32_hex(b), ssv2.f32_hex(c)) for a, b, c in terms] == [
        (t["seed"], t["coef_hex"], t["decay_hex"]) for t in z["terms"]]


def test_update_vector():
    u = V["update"]
    theta = [struct.unpack("<f", bytes.fromhex(x))[0] for x in u["theta"]]
    terms = [(h(t["key"]), t["coef"], t["decay"]) for t in u["terms"]]
    out = ssv2.update(theta, u["offset"], u["dist"], terms)
    assert [ssv2.f32_hex(x) for x in out] == u["result"]
    p = u["perturb"]
    perturbed = [ssv2.f32(v + ssv2.f32(ssv2.f32(p["scale"]) * ssv2.z(u["dist"], h(p["key"]), u["offset"] + i)))
                 for i, v in enumerate(out)]
    assert [ssv2.f32_hex(x) for x in perturbed] == u["perturbed"]


def test_ledger_vectors():
    lv = V["ledger"]
    parsed = ssv2.parse_ledger(bytes.fromhex(lv["file"]))
    assert parsed["swarm_id"] == FULL_ID and not parsed["damage"] and parsed["torn"] == 0
    assert [r.rid.hex() for r in parsed["records"]] == lv["records_in_file_order"]
    ledger = ssv2.LedgerSet()
    for r in parsed["records"]:
        ledger.add(r)
    assert sorted(r.hex() for r in ledger.rids) == lv["held"]
    assert {str(s): [r.rid.hex() for r in ledger.applicable(s)] for s in (12, 13)} == lv["applicable"]
    assert [[st, m.hex()] for (st, m) in sorted(ledger.slots) if ledger.equivocated(st, m)] == lv["equivocated"]
    ordered = sorted((r for held in ledger.slots.values() for r in held), key=lambda r: (r.step, r.machine, r.rid))
    assert [r.rid.hex() for r in ordered] == lv["ordered"]
    torn = ssv2.parse_ledger(bytes.fromhex(lv["torn"]["file"]))
    assert (torn["torn"], len(torn["records"]), torn["damage"]) == (lv["torn"]["torn_bytes"], lv["torn"]["records"], [])
    dmg = ssv2.parse_ledger(bytes.fromhex(lv["damaged"]["file"]))
    assert [list(d) for d in dmg["damage"]] == lv["damaged"]["damage"]
    assert [r.rid.hex() for r in dmg["records"]] == lv["damaged"]["records"]


def test_digest_message_and_dht_vectors():
    d = V["digest"]
    tensors = [(t["name"], t["dtype"], tuple(t["shape"]), bytes.fromhex(t["data"])) for t in d["tensors"]]
    assert ssv2.weight_digest(tensors) == d["digest"]
    kinds = {"status": 5, "gossip": 5, "range": 3, "ranged": 5, "votes": 2, "peers": 3, "bye": 1}
    for kind, hexed in V["messages"].items():
        msg = ssv2.unpack(bytes.fromhex(hexed), 1 << 20)
        assert msg[0] == kind and len(msg) == kinds[kind]
    peers = ssv2.unpack(bytes.fromhex(V["messages"]["peers"]), 1 << 20)
    assert all(ssv2.valid_machine(m) for m in peers[1] + peers[2]) and len(peers[1]) == 1 and len(peers[2]) == 2
    gossip = ssv2.unpack(bytes.fromhex(V["messages"]["gossip"]), 1 << 20)
    assert ssv2.decode_record(gossip[1][0]).encode().hex() == V["record"]["encoded"]
    e = V["dht_entry"]
    _, machine = ssv2.machine_of_seed(bytes.fromhex(e["signer_seed"]))
    entry = bytes.fromhex(e["entry"])
    assert e["key"] == f"seedswarm/2/{FULL_ID.hex()}/members/{ssv2.sha256(machine)[0] % 64}"
    message, subkey_ser, value_ser = ssv2.dht_message(e["key"], machine, entry, e["expiration"])
    assert (message.hex(), subkey_ser.hex(), value_ser.hex()) == (e["message"], e["subkey_ser"], e["value_ser"])
    stored = bytes.fromhex(e["stored"])
    assert stored[:len(value_ser)] == value_ser and stored[len(value_ser):len(value_ser) + 8] == b"[ss2sig:"
    assert stored.endswith(b"]") and ssv2.verify(machine[6:], message, stored[-65:-1])
    decoded = ssv2.unpack(entry, 33024)
    assert decoded[:3] == ["ss2", "member", FULL_ID] and decoded[3]["name"] == "peer-a"


# ============================================================== against the reference, random inputs
from seedswarm.protocol import canonical as ref_canonical  # noqa: E402  (the reference, for comparison only)
from seedswarm.protocol import codec as ref_codec  # noqa: E402
from seedswarm.protocol.aggregation import step_terms as ref_step_terms  # noqa: E402
from seedswarm.protocol.admission import check_record  # noqa: E402
from seedswarm.protocol.distributions import z_value  # noqa: E402
from seedswarm.protocol.errors import ProtocolError  # noqa: E402
from seedswarm.protocol import globs  # noqa: E402
from seedswarm.protocol.identity import check_machine_id, verify as ref_verify  # noqa: E402
from seedswarm.protocol.hashing import derive_seed  # noqa: E402
from seedswarm.protocol.identity import Signer, solve_pow  # noqa: E402
from seedswarm.protocol.ledger import Ledger, encode_ledger, scan_ledger  # noqa: E402
from seedswarm.protocol.records import Record, decode_record  # noqa: E402
from seedswarm.protocol.schedule import LRSchedule, cos_pi  # noqa: E402
from seedswarm.protocol.spec import SwarmSpec  # noqa: E402

u64 = st.integers(0, (1 << 64) - 1)
SIGNERS = [bytes([i]) * 32 for i in range(1, 6)]


@FAST
@given(st.binary(min_size=32, max_size=32), st.sampled_from(SIGNERS), u64, st.integers(1, 65536), st.integers(0, 65535))
def test_pool_indices_and_seeds_match(swarm, signer_seed, sample, size, index):
    from seedswarm.protocol.pool import pool_index, pool_seed

    machine = Signer(signer_seed).machine
    assert ssv2.pool_index(swarm, machine, sample, size) == pool_index(swarm, machine, sample, size)
    assert ssv2.pool_seed(swarm, sample, index) == pool_seed(swarm, sample, index)


@FAST
@given(st.binary(min_size=32, max_size=32), st.sampled_from(SIGNERS), u64, u64, st.integers(0, 1 << 42))
def test_seeds_and_z_match(swarm, signer_seed, sample, key, index):
    machine = Signer(signer_seed).machine
    assert ssv2.seed(swarm, machine, sample) == derive_seed(swarm, machine, sample)
    for dist in ("rademacher", "gaussian"):
        assert ssv2.z(dist, key, index, TABLE) == z_value(dist, key, index)


clips = st.floats(1e-300, 1e30, allow_nan=False, allow_infinity=False)


@FAST
@given(st.binary(min_size=1, max_size=64), st.integers(0, 64), clips)
def test_codec_decode_matches(codes, e, clip):
    try:
        ours = [d_hex(x) for x in ssv2.decode_grads(codes, e, clip)]
    except ssv2.Invalid:
        ours = None
    try:
        ref = [d_hex(x) for x in ref_codec.decode(codes, e, clip)]
    except ProtocolError:
        ref = None
    assert ours == ref


@FAST
@given(st.lists(st.floats(-1e35, 1e35, allow_nan=False), min_size=1, max_size=16), u64,
       st.floats(1e-6, 1e30, allow_nan=False, allow_infinity=False))
def test_codec_encode_matches(grads, first_seed, clip):
    seeds = [(first_seed + 7919 * i) & ((1 << 64) - 1) for i in range(len(grads))]
    assert ssv2.encode_grads(grads, seeds, clip) == ref_codec.encode(grads, seeds, clip)


@FAST
@given(st.floats(0.0, 1.0, allow_nan=False), st.floats(0.0, 1e6, allow_nan=False),
       st.sampled_from(["constant", "linear", "cosine"]), st.integers(0, 1 << 32), st.integers(0, 1 << 32),
       st.floats(0.0, 1.0, allow_nan=False), st.one_of(u64, st.integers(0, 3000)))
def test_cos_pi_and_lr_match(t, base, kind, warmup, total, min_ratio, step):
    assert d_hex(ssv2.cos_pi(t)) == d_hex(cos_pi(t))
    if kind != "constant" and total <= warmup:
        warmup, total = min(warmup, (1 << 32) - 1000), min(warmup, (1 << 32) - 1000) + 1 + total % 1000
    schedule = {"base": base, "kind": kind, "warmup_steps": warmup, "total_steps": total, "min_ratio": min_ratio}
    assert d_hex(ssv2.lr(schedule, step)) == d_hex(LRSchedule(**schedule)(step))


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 64) - 1),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40))
json_like = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                               st.dictionaries(st.text(max_size=8), inner, max_size=5)),
                         max_leaves=25)
wire_like = st.recursive(st.one_of(json_scalars, st.binary(max_size=300)),
                         lambda inner: st.one_of(st.lists(inner, max_size=20),
                                                 st.dictionaries(st.text(max_size=40), inner, max_size=20)),
                         max_leaves=60)


def _ref_pack(value):
    try:
        return ref_canonical.pack(value)
    except ProtocolError:
        return None


def _our_pack(value):
    try:
        return ssv2.pack(value)
    except ssv2.Invalid:
        return None


@FAST
@given(wire_like)
def test_canonical_encoding_matches(value):
    assert _our_pack(value) == _ref_pack(value)


def _mutations(data: bytes, draw) -> bytes:
    how = draw(st.integers(0, 4))
    if not data or how == 0:
        return draw(st.binary(max_size=64))
    i = draw(st.integers(0, len(data) - 1))
    if how == 1:
        return data[:i] + bytes([data[i] ^ (1 << draw(st.integers(0, 7)))]) + data[i + 1:]
    if how == 2:
        return data[:i]
    if how == 3:
        return data[:i] + draw(st.binary(min_size=1, max_size=4)) + data[i:]
    return data + draw(st.binary(min_size=1, max_size=3))


def _decode_both(data: bytes, limit: int):
    try:
        ours = ("ok", ssv2.pack(ssv2.unpack(data, limit)))
    except ssv2.Invalid:
        ours = ("rejected",)
    try:
        ref = ("ok", ref_canonical.pack(ref_canonical.unpack_canonical(data, limit, "value")))
    except ProtocolError:
        ref = ("rejected",)
    return ours, ref


@settings(max_examples=150, deadline=None)
@given(wire_like, st.data())
def test_canonical_decoding_accepts_and_rejects_alike(value, data):
    encoded = _ref_pack(value)
    assume(encoded is not None)
    ours, ref = _decode_both(_mutations(encoded, data.draw), 4096)
    assert ours == ref


@FAST
@given(st.binary(max_size=40))
def test_canonical_decoding_of_noise(noise):
    ours, ref = _decode_both(noise, 4096)
    assert ours == ref


def test_canonical_decoding_edge_cases():
    cases = [b"\xca\x3f\x80\x00\x00", b"\xcc\x05", b"\xd9\x01a", b"\x82\xa1a\x01\xa1a\x02", b"\x82\xa1b\x01\xa1a\x02",
             b"\xd4\x01\x00", b"\xa2\xed\xa0", b"\xc1", b"\x91" * 17 + b"\xc0", b"\x91" * 16 + b"\xc0",
             b"\xcb" + struct.pack(">d", -0.0), b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x01", b"\xc0\xc0", b"\x81\xc4\x01a\x01",
             b"\xd0\xe0", b"\xd0\xdf", b"\xcf" + (1 << 63).to_bytes(8, "big"), b"\xd3" + (-(1 << 63)).to_bytes(8, "big", signed=True)]
    for case in cases:
        ours, ref = _decode_both(case, 4096)
        assert ours == ref, case.hex()


# --- swarm specs -----------------------------------------------------------------------------
wrong = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(-2, 2), st.text(max_size=3), st.just([]),
                  st.just({}))
edge_floats = st.one_of(st.floats(-1e31, 1e31), st.integers(-5, 10**6), st.sampled_from(
    [2**53 + 1, -0.0, 0.0, 1e6, 1e30, 1.0000000000000002e30, 0, 1, 2**64 - 1, 1000.0, 1000.0000000000001, 1000,
     1001, 1e-30, 9.999999999999999e-31, 5e-324]), wrong)
edge_ints = st.one_of(st.integers(-2, 70), st.sampled_from([0, 1, 8, 9, 64, 65, 1 << 20, (1 << 20) + 1, 1 << 32,
                                                            (1 << 32) + 1, 1024, 1025]), st.floats(0, 5), wrong)
pattern_lists = st.lists(st.one_of(st.text(st.sampled_from("ab.*?[]!-"), min_size=1, max_size=6),
                                   st.sampled_from(["*", "*bias", "[a-c]*", "a[b", "[z-a]"])), max_size=4)


@st.composite
def valid_spec(draw):
    """A JSON-like spec, valid or nearly so, with every optional field present or not."""
    d = {"name": draw(st.text(min_size=1, max_size=4)), "model": {"id": draw(st.text(min_size=1, max_size=4))},
         "task": {"kind": draw(st.sampled_from(["lm", "label-prompts"]))}}
    optional = {
        ("model", "revision"): st.text(max_size=3), ("model", "digest"): st.sampled_from(["", "ab" * 32]),
        ("model", "dtype"): st.sampled_from(["float32", "bfloat16", "float16"]),
        ("task", "options"): st.dictionaries(st.text(max_size=3), json_like, max_size=3),
        ("trainable",): pattern_lists.filter(bool), ("frozen",): pattern_lists, ("no_decay",): pattern_lists,
        ("perturbation",): st.sampled_from(["rademacher", "gaussian"]),
        ("perturbation_rank",): st.sampled_from([0, 1, 4, 16, 64, 2, 8, 256]),
        ("aggregation", "normalize"): st.sampled_from(["none", "rms"]),
        ("eps",): st.one_of(st.floats(1e-9, 1e3), st.integers(1, 9)),
        ("weight_decay",): st.one_of(st.floats(0, 1.0), st.integers(0, 2)),
        ("lr", "base"): st.one_of(st.floats(0, 1e6), st.integers(0, 10)), ("lr", "min_ratio"): st.floats(0, 1),
        ("lr", "kind"): st.just("constant"), ("lr", "warmup_steps"): st.integers(0, 1 << 32),
        ("codec", "name"): st.just("int8-sr-pow2"), ("codec", "clip"): st.one_of(st.floats(1e-6, 1e30), st.integers(1, 99)),
        ("aggregation", "clip"): st.sampled_from(["none", "median", "redescend"]),
        ("aggregation", "clip_factor"): st.one_of(st.floats(1e-6, 1e6), st.integers(1, 9)),
        ("admission", "mode"): st.just("open"), ("admission", "pow_bits"): st.integers(0, 32),
        ("samples_per_step",): st.integers(1, 1024), ("batch_size",): st.integers(1, 1 << 20),
        ("digest_every",): st.integers(1, 1 << 20), ("delay",): st.integers(0, 2), ("late_window",): st.integers(0, 64),
        ("future_window",): st.integers(4, 64), ("protocol_version",): st.just(2),
    }
    for path, strategy in optional.items():
        if draw(st.booleans()):
            target = d
            for key in path[:-1]:
                target = target.setdefault(key, {})
            target[path[-1]] = draw(strategy)
    if draw(st.booleans()):  # a decaying schedule, or a members-only swarm
        w = draw(st.integers(0, 100))
        d["lr"] = dict(d.get("lr", {}), kind=draw(st.sampled_from(["linear", "cosine"])), warmup_steps=w,
                       total_steps=w + draw(st.integers(1, 100)))
    if draw(st.booleans()):
        d["admission"] = {"mode": "members", "authority": "ab" * 32}
    return d


@st.composite
def spec_objects(draw):
    d = draw(valid_spec())
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2]))):  # break it (or not) in a few places
        how = draw(st.integers(0, 3))
        path = draw(st.sampled_from([("name",), ("model",), ("model", "id"), ("model", "digest"), ("model", "dtype"),
                                     ("task",), ("task", "kind"), ("task", "options"), ("trainable",), ("frozen",),
                                     ("eps",), ("weight_decay",), ("lr", "base"), ("lr", "kind"), ("lr", "total_steps"),
                                     ("lr", "warmup_steps"), ("lr", "min_ratio"), ("codec", "clip"), ("codec", "name"),
                                     ("aggregation", "clip_factor"), ("admission", "pow_bits"),
                                     ("admission", "authority"), ("samples_per_step",), ("batch_size",), ("delay",),
                                     ("late_window",), ("future_window",), ("protocol_version",), ("perturbation",),
                                     ("perturbation_rank",)]))
        target = d
        for key in path[:-1]:
            target = target.setdefault(key, {}) if isinstance(target, dict) else {}
        if not isinstance(target, dict):
            continue
        if how == 0:
            target.pop(path[-1], None)
        elif how == 1:
            target[path[-1]] = draw(edge_floats)
        elif how == 2:
            target[path[-1]] = draw(edge_ints)
        else:
            target[draw(st.text(min_size=1, max_size=4))] = draw(wrong)
    return d


def _ref_spec(obj):
    try:
        spec = SwarmSpec.from_dict(obj)
        return spec.canonical_bytes(), spec.swarm_id
    except ProtocolError:
        return None


def _our_spec(obj):
    try:
        _, data, sid = ssv2.spec_from_obj(obj)
        return data, sid
    except ssv2.Invalid:
        return None


@settings(max_examples=300, deadline=None)
@given(spec_objects())
def test_spec_reading_matches(obj):
    """Same verdict, same canonical bytes, same swarm id, from JSON-like input (4.2)."""
    obj = json.loads(json.dumps(obj))  # what a JSON file gives
    ref = _ref_spec(obj)
    assert _our_spec(obj) == ref
    if ref is not None:
        assert ssv2.spec_from_canonical(ref[0])[1] == ref[1]


@FAST
@given(st.data())
def test_spec_canonical_bytes_accepted_and_rejected_alike(data):
    mutated = _mutations(FULL_BYTES, data.draw)
    try:
        ours = ssv2.spec_from_canonical(mutated)[1]
    except ssv2.Invalid:
        ours = None
    try:
        ref = SwarmSpec.from_canonical(mutated).swarm_id
    except ProtocolError:
        ref = None
    assert ours == ref


# --- records, steps, ledgers ------------------------------------------------------------------------
SWARM = SwarmSpec.from_json(V["spec_full"]["json"])
TICKETS = {seed: solve_pow(SWARM.swarm_id, Signer(seed).machine, SWARM.admission.pow_bits) for seed in SIGNERS}
grads_bytes = st.binary(min_size=1, max_size=4).map(lambda b: bytes(x if x != 0x80 else 0x7F for x in b))


@st.composite
def records(draw, step=None, n=None):
    seed = draw(st.sampled_from(SIGNERS))
    size = n if n is not None else draw(st.sampled_from([2, 2, 2, 1, 3]))
    grads = draw(st.binary(min_size=size, max_size=size)).replace(b"\x80", b"\x81")
    ticket = TICKETS[seed] if draw(st.integers(0, 9)) else draw(st.binary(max_size=8))
    return Record.create(Signer(seed), SWARM.swarm_id, draw(st.integers(0, 4)) if step is None else step,
                         draw(st.integers(0, 64)), grads, ticket)


def _ref_record(data):
    try:
        r = decode_record(data)
    except ProtocolError:
        return None
    try:
        check_record(SWARM, r)
        ok = True
    except ProtocolError:
        ok = False
    return r.body, r.rid, ok


def _our_record(data):
    try:
        r = ssv2.decode_record(data)
    except ssv2.Invalid:
        return None
    return r.body, r.rid, ssv2.admissible(FULL, FULL_ID, r)


@settings(max_examples=150, deadline=None)
@given(records(), st.data())
def test_records_decode_and_verify_alike(record, data):
    assert _our_record(record.encode()) == _ref_record(record.encode())
    mutated = _mutations(record.encode(), data.draw)
    assert _our_record(mutated) == _ref_record(mutated)


@settings(max_examples=100, deadline=None)
@given(st.lists(records(step=9, n=2), min_size=1, max_size=6), st.floats(0.01, 10.0),
       st.sampled_from(["median", "none", "redescend"]),
       st.floats(0.0, 0.5), st.floats(1e-3, 1e4), st.sampled_from([0, 0, 1, 3, 64]))
def test_step_terms_match(recs, factor, rule, decay, clip, pool):
    ledger = Ledger(recs)
    applicable = ledger.applicable(9)
    obj = json.loads(V["spec_full"]["json"])
    obj.update(weight_decay=decay, aggregation={"clip": rule, "clip_factor": factor}, codec={"clip": clip}, seed_pool=pool)
    spec = SwarmSpec.from_dict(obj)
    ours_spec, _, sid = ssv2.spec_from_obj(obj)
    ours = ssv2.step_terms(ours_spec, sid, [ssv2.decode_record(r.encode()) for r in applicable])
    ref = ref_step_terms(spec, applicable)
    assert [(a, ssv2.f32_hex(b), ssv2.f32_hex(c)) for a, b, c in ours] == [
        (t.seed, ssv2.f32_hex(t.coef), ssv2.f32_hex(t.decay)) for t in ref]


@settings(max_examples=100, deadline=None)
@given(st.lists(records(), max_size=12))
def test_ledger_set_semantics_match(recs):
    ref = Ledger(recs)
    ours = ssv2.LedgerSet()
    for r in recs:
        ours.add(ssv2.decode_record(r.encode()))
    for step in range(5):
        assert [r.rid for r in ours.applicable(step)] == [r.rid for r in ref.applicable(step)]


@settings(max_examples=100, deadline=None)
@given(st.lists(records(), max_size=5), st.data())
def test_ledger_files_parse_alike(recs, data):
    blob = encode_ledger(SWARM, recs)
    for _ in range(data.draw(st.integers(1, 3))):
        blob = _mutations(blob, data.draw) if data.draw(st.booleans()) else blob[:len(blob) - data.draw(st.integers(0, 30))]
    try:
        scan = scan_ledger(blob)
        ref = (scan.torn_bytes, [tuple(d) for d in scan.damage], [r.rid for r in scan.records])
    except ProtocolError:
        ref = None
    try:
        parsed = ssv2.parse_ledger(blob)
        ours = (parsed["torn"], [tuple(d) for d in parsed["damage"]], [r.rid for r in parsed["records"]])
    except ssv2.Invalid:
        ours = None
    assert ours == ref


# --- patterns and update arithmetic ------------------------------------------------------------------
@settings(max_examples=400, deadline=None)
@given(st.text(st.sampled_from("ab-]![*?^\\z."), min_size=1, max_size=9), st.text(st.sampled_from("ab-]![^\\z.\n"), max_size=6))
def test_globs_match_the_reference(pattern, name):
    """Same verdict on the pattern, same match; on valid patterns, also what fnmatchcase says."""
    try:
        ref = globs.match(name, pattern)
    except ProtocolError:
        ref = None
    try:
        ours = ssv2.glob_match(name, pattern)
    except ssv2.Invalid:
        ours = None
    assert ours == ref
    if ref is not None:
        assert ref == fnmatch.fnmatchcase(name, pattern)


f32s = st.floats(width=32, allow_nan=False, allow_infinity=False)


@FAST
@given(st.lists(f32s, min_size=1, max_size=8), st.integers(0, 1 << 20),
       st.lists(st.tuples(u64, f32s, st.floats(0.5, 1.0, width=32)), min_size=1, max_size=4),
       st.sampled_from(["rademacher", "gaussian"]))
def test_update_arithmetic_matches_reference(values, offset, terms, dist):
    import torch

    from seedswarm.model.perturb import Term, apply_reference

    flat = torch.tensor(values, dtype=torch.float32)
    apply_reference(flat, [Term(k, c, d) for k, c, d in terms], dist, offset=offset)
    ours = ssv2.update(values, offset, dist, terms, TABLE)
    assert [ssv2.f32_hex(x) for x in ours] == [ssv2.f32_hex(x) for x in flat.tolist()]


# ============================================================== rules where the reference was once wrong
# (each was an xfail(strict) here until the reference was fixed; kept as regression tests)
BASE = {"name": "x", "model": {"id": "m"}, "task": {"kind": "k"}}


def test_reference_rejects_a_huge_integer_in_a_float_field():
    with pytest.raises(ssv2.Invalid):
        ssv2.spec_from_obj(dict(BASE, eps=10**400))
    with pytest.raises(ProtocolError):
        SwarmSpec.from_json(json.dumps(dict(BASE, eps=10**400))).swarm_id


def test_reference_rejects_a_lone_surrogate():
    text = json.dumps(dict(BASE, name="\ud800"))
    with pytest.raises(ssv2.Invalid):
        ssv2.spec_from_json(text)
    with pytest.raises(ProtocolError):
        SwarmSpec.from_json(text).swarm_id


def test_reference_rejects_a_spec_over_32_kib():
    big = dict(BASE, task={"kind": "k", "options": {"a": "x" * 40000}})
    with pytest.raises(ssv2.Invalid):
        ssv2.spec_from_obj(big)
    with pytest.raises(ProtocolError):
        SwarmSpec.from_dict(big)


def test_reference_rejects_sample_counters_past_u64():
    signer = Signer(SIGNERS[0])
    r = Record.create(signer, SWARM.swarm_id, (1 << 64) - 1, 0, b"\x01\x02", TICKETS[SIGNERS[0]])
    assert not ssv2.admissible(FULL, FULL_ID, ssv2.decode_record(r.encode()))
    with pytest.raises(ProtocolError):
        check_record(SWARM, r)


def test_every_valid_clip_encodes():
    """codec.clip >= 1e-30 (4.1): the smallest scale is a normal double, so all zeros encode
    (once, a spec-valid 5e-324 clip made the encoder divide by zero)."""
    for spec_clip in (5e-324, 9.999999999999999e-31):
        with pytest.raises(ssv2.Invalid):
            ssv2.spec_from_obj(dict(BASE, codec={"clip": spec_clip}))
        with pytest.raises(ProtocolError):
            SwarmSpec.from_dict(dict(BASE, codec={"clip": spec_clip}))
    SwarmSpec.from_dict(dict(BASE, codec={"clip": 1e-30}))
    ssv2.spec_from_obj(dict(BASE, codec={"clip": 1e-30}))
    assert ref_codec.encode([0.0, 1e-80], [1, 2], 1e-30) == ssv2.encode_grads([0.0, 1e-80], [1, 2], 1e-30) == (b"\x00\x00", 64)


def test_reference_rounds_bfloat16_after_every_term():
    import torch

    from seedswarm.model.perturb import Term, apply

    terms = [Term(0x9E3779B97F4A7C15 * i & ((1 << 64) - 1), 1e-3, 1.0) for i in range(1, 9)]
    together = torch.full((64,), 1.0, dtype=torch.bfloat16)
    apply(together, terms, "rademacher")              # one pass
    one_by_one = torch.full((64,), 1.0, dtype=torch.bfloat16)
    for term in terms:
        apply(one_by_one, [term], "rademacher")       # a pass per term
    assert torch.equal(together, one_by_one)
    ours = ssv2.update([1.0] * 64, 0, "rademacher", [(t.key, t.coef, t.decay) for t in terms], dtype="bfloat16")
    assert ours == together.float().tolist()


# ============================================================== rules added since the first sync
def test_ed25519_vectors():
    e = V["ed25519"]
    assert sorted(k.hex() for k in ssv2.SMALL_ORDER) == e["small_order"]
    for row in e["rejected_keys"]:
        assert not ssv2.valid_machine(ssv2.PREFIX + bytes.fromhex(row["key"])), row["why"]
    assert ssv2.valid_machine(ssv2.PREFIX + bytes.fromhex(e["accepted_key"]))
    r = e["small_order_r"]
    assert not ssv2.verify(bytes.fromhex(r["key"]), bytes.fromhex(r["message"]), bytes.fromhex(r["signature"]))


P25519 = 2**255 - 19
keys = st.one_of(st.binary(min_size=32, max_size=32), st.sampled_from(sorted(ssv2.SMALL_ORDER)),
                 st.integers(P25519, 2**255 - 1).map(lambda y: y.to_bytes(32, "little")),
                 st.integers(0, 40).flatmap(lambda y: st.sampled_from([y, y | 1 << 255])).map(lambda v: v.to_bytes(32, "little")))


@settings(max_examples=200, deadline=None)
@given(keys)
def test_machine_ids_accepted_alike(key):
    machine = ssv2.PREFIX + key
    try:
        check_machine_id(machine)
        ref = True
    except ProtocolError:
        ref = False
    assert ssv2.valid_machine(machine) == ref


@FAST
@given(st.one_of(st.sampled_from(sorted(ssv2.SMALL_ORDER)), st.binary(min_size=32, max_size=32)), st.binary(max_size=16))
def test_signatures_with_odd_r_verify_alike(r, message):
    pub, _ = ssv2.machine_of_seed(SIGNERS[0])
    sig = r + ssv2.sign(SIGNERS[0], message)[32:]
    try:
        ref_verify(pub, message, sig)
        ref = True
    except ProtocolError:
        ref = False
    assert ssv2.verify(pub, message, sig) == ref


def test_glob_vectors():
    g = V["globs"]
    for pattern in g["invalid"]:
        assert not ssv2.glob_valid(pattern)
        with pytest.raises(ssv2.Invalid):
            ssv2.spec_from_obj(dict(BASE, no_decay=[pattern]))
    for row in g["valid"]:
        assert [n for n in g["names"] if ssv2.glob_match(n, row["pattern"])] == row["matches"], row["pattern"]


def _check_step_vector(name: str) -> dict:
    """The step vector ``name``: its spec hashes to its swarm id and its terms come out exact;
    returns the spec."""
    r = V[name]
    spec, _, sid = ssv2.spec_from_json(r["spec_json"])
    assert sid.hex() == r["swarm_id"]
    terms = ssv2.step_terms(spec, sid, [ssv2.decode_record(bytes.fromhex(x)) for x in r["records"]])
    assert [(f"{a:016x}", ssv2.f32_hex(b), ssv2.f32_hex(c)) for a, b, c in terms] == [
        (t["seed"], t["coef_hex"], t["decay_hex"]) for t in r["terms"]]
    return spec


def test_redescend_and_default_rule_vectors():
    _check_step_vector("step_redescend")
    assert ssv2.spec_from_json(V["spec_minimal"]["json"])[0]["aggregation"] == {"clip": "redescend", "clip_factor": 2.0,
                                                                               "normalize": "none"}


def test_rms_step_vector():
    assert _check_step_vector("step_rms")["aggregation"]["normalize"] == "rms"


def test_optional_spec_field_vector():
    o = V["spec_optional"]
    _, data, sid = ssv2.spec_from_json(o["json_explicit_default"])
    assert sid.hex() == o["swarm_id_default"] and data.hex() == o["canonical_default"]
    with pytest.raises(ssv2.Invalid):
        ssv2.spec_from_canonical(bytes.fromhex(o["rejected_canonical"]))
    _, data, sid = ssv2.spec_from_json(o["json_rms"])
    assert sid.hex() == o["swarm_id_rms"] and data.hex() == o["canonical_rms"]
    assert ssv2.spec_from_canonical(data)[1] == sid


def test_lowrank_vectors():
    """5.1: low-rank z at every rank, two update terms and a perturbed copy, the optional field."""
    zv = V["z_lowrank"]
    shape = tuple(zv["shape"])
    for rank, want in zv["ranks"].items():
        ours = [ssv2.z_lowrank(h(zv["key"]), shape, int(rank), i) for i in range(shape[0] * shape[1])]
        assert [ssv2.f32_hex(x) for x in ours] == want["z_hex"]
    u = V["update_lowrank"]
    theta = [struct.unpack("<f", bytes.fromhex(x))[0] for x in u["theta"]]
    terms = [(h(t["key"]), t["coef"], t["decay"]) for t in u["terms"]]
    out = ssv2.update_lowrank(theta, tuple(u["shape"]), u["rank"], terms)
    assert [ssv2.f32_hex(x) for x in out] == u["result"]
    p = u["perturb"]
    perturbed = ssv2.update_lowrank(out, tuple(u["shape"]), u["rank"], [(h(p["key"]), p["scale"], 1.0)])
    assert [ssv2.f32_hex(x) for x in perturbed] == u["perturbed"]
    sv = V["spec_lowrank"]
    _, data, sid = ssv2.spec_from_json(sv["json"])
    assert data.hex() == sv["canonical"] and sid.hex() == sv["swarm_id"]
    assert ssv2.spec_from_json(sv["json_zero"])[2].hex() == sv["swarm_id_zero"]
    for text in sv["rejected_json"]:
        with pytest.raises(ssv2.Invalid):
            ssv2.spec_from_json(text)


def test_pool_vectors():
    """5.2 and 10.4: pool indices and seeds, a pooled step's sums and terms, its tensor update."""
    p = V["seed_pool"]
    swarm = bytes.fromhex(p["swarm_id"])
    for row in p["indices"]:
        assert ssv2.pool_index(swarm, bytes.fromhex(row["machine"]), row["sample"], row["size"]) == row["index"]
    for row in p["seeds"]:
        assert f"{ssv2.pool_seed(swarm, row['step'], row['index']):016x}" == row["seed"]
    sv = V["spec_pool"]
    _, data, sid = ssv2.spec_from_json(sv["json"])
    assert data.hex() == sv["canonical"] and sid.hex() == sv["swarm_id"]
    assert ssv2.spec_from_canonical(data)[1] == sid
    assert ssv2.spec_from_json(sv["json_zero"])[2].hex() == sv["swarm_id_zero"]
    for text in sv["rejected_json"]:
        with pytest.raises(ssv2.Invalid):
            ssv2.spec_from_json(text)
    u = V["update_pool"]
    spec, _, sid = ssv2.spec_from_json(u["spec_json"])
    assert sid.hex() == u["swarm_id"]
    recs = sorted((ssv2.decode_record(bytes.fromhex(x)) for x in u["records"]), key=lambda r: r.machine)
    n, k = spec["samples_per_step"], spec["seed_pool"]
    assert [ssv2.pool_index(sid, r.machine, r.step * n + j, k) for r in recs for j in range(n)] == u["indices"]
    terms = ssv2.step_terms(spec, sid, recs)
    assert [(f"{a:016x}", ssv2.f32_hex(b), ssv2.f32_hex(c)) for a, b, c in terms] == [
        (t["seed"], t["coef_hex"], t["decay_hex"]) for t in u["terms"]]
    t = u["tensor"]
    name, shape = t["name"], tuple(t["shape"])
    assert ssv2.trainable(spec, name) and ssv2.decays(spec, name)
    theta = [struct.unpack("<f", bytes.fromhex(x))[0] for x in t["theta"]]
    out = ssv2.update_lowrank(theta, shape, spec["perturbation_rank"],
                              [(ssv2.tensor_key(a, name), b, c) for a, b, c in terms])
    assert [ssv2.f32_hex(x) for x in out] == t["result"]


@FAST
@given(st.integers(1, 9), st.integers(1, 9), st.sampled_from([1, 4, 16, 64]),
       st.lists(st.tuples(u64, f32s, st.floats(0.5, 1.0, width=32)), min_size=1, max_size=3), st.data())
def test_lowrank_update_matches_reference(m, n, rank, terms, data):
    """The engine's matrix-product path (model/lowrank.py) against 5.1 element by element."""
    import torch

    from seedswarm.model.lowrank import apply as lowrank_apply
    from seedswarm.model.perturb import Term

    values = data.draw(st.lists(f32s, min_size=m * n, max_size=m * n))
    weight = torch.tensor(values, dtype=torch.float32).view(m, n)
    lowrank_apply(weight, [Term(k, c, d) for k, c, d in terms], rank)
    ours = ssv2.update_lowrank(values, (m, n), rank, terms)
    assert [ssv2.f32_hex(x) for x in ours] == [ssv2.f32_hex(x) for x in weight.flatten().tolist()]


def test_tally_vector():
    t = V["tally"]
    me = ssv2.machine_of_seed(bytes([0x40]) * 32)[1]
    for case in t["cases"]:
        votes = {bytes.fromhex(v["machine"]): bytes.fromhex(v["digest"]) for v in case["votes"]}
        standing = {bytes.fromhex(v["machine"]): v["standing"] for v in case["votes"]}
        standing[me] = case["own_standing"]
        winner, weight, total, supporters, split, leader, followed = ssv2.tally(
            votes, standing, bytes.fromhex(case["own_digest"]), me)
        assert (winner.hex() if winner else None, weight, total, [m.hex() for m in supporters], split, leader.hex(),
                [m.hex() for m in followed]) == (case["winner"], case["weight"], case["total"], case["supporters"],
                                                 case["split"], case["leader"], case["leader_supporters"])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_update_16bit_vectors(dtype):
    u = V["update_16bit"][dtype]
    raw = bytes.fromhex(u["theta"])
    theta = [ssv2.from_bits16(int.from_bytes(raw[i:i + 2], "little"), dtype) for i in range(0, len(raw), 2)]
    out = ssv2.update(theta, u["offset"], u["dist"], [(h(t["key"]), t["coef"], t["decay"]) for t in u["terms"]],
                      dtype=dtype)
    assert b"".join(ssv2.bits16(x, dtype).to_bytes(2, "little") for x in out).hex() == u["result"]


@FAST
@given(st.lists(f32s, min_size=1, max_size=8), st.integers(0, 1 << 20),
       st.lists(st.tuples(u64, f32s, st.floats(0.5, 1.0, width=32)), min_size=1, max_size=4),
       st.sampled_from(["bfloat16", "float16"]))
def test_16bit_update_arithmetic_matches_reference(values, offset, terms, dtype):
    import torch

    from seedswarm.model.perturb import Term, apply_reference

    flat = torch.tensor(values, dtype=torch.float32).to(getattr(torch, dtype))
    start = flat.float().tolist()
    apply_reference(flat, [Term(k, c, d) for k, c, d in terms], "rademacher", offset=offset)
    ours = ssv2.update(start, offset, "rademacher", terms, TABLE, dtype=dtype)
    assert [ssv2.bits16(x, dtype) for x in ours] == [ssv2.bits16(x, dtype) for x in flat.float().tolist()]


def test_duplicate_json_keys_rejected():
    for text in ('{"name": "a", "name": "b", "model": {"id": "m"}, "task": {"kind": "k"}}',
                 '{"name": "a", "model": {"id": "m"}, "task": {"kind": "k", "options": {"x": 1, "\\u0078": 2}}}'):
        with pytest.raises(ssv2.Invalid):
            ssv2.spec_from_json(text)
        with pytest.raises(ProtocolError):
            SwarmSpec.from_json(text)


def test_equivocation_voids_one_slot_only():
    a = Record.create(Signer(SIGNERS[0]), SWARM.swarm_id, 3, 0, b"\x01\x02", TICKETS[SIGNERS[0]])
    a2 = Record.create(Signer(SIGNERS[0]), SWARM.swarm_id, 3, 0, b"\x01\x03", TICKETS[SIGNERS[0]])
    later = Record.create(Signer(SIGNERS[0]), SWARM.swarm_id, 4, 0, b"\x01\x04", TICKETS[SIGNERS[0]])
    earlier = Record.create(Signer(SIGNERS[0]), SWARM.swarm_id, 2, 0, b"\x01\x05", TICKETS[SIGNERS[0]])
    ref, ours = Ledger([later, a, a2, earlier]), ssv2.LedgerSet()
    for r in (later, a, a2, earlier):
        ours.add(ssv2.decode_record(r.encode()))
    for step in (2, 3, 4):
        assert [r.rid for r in ours.applicable(step)] == [r.rid for r in ref.applicable(step)] == (
            [] if step == 3 else [(earlier if step == 2 else later).rid])


# ============================================================== where the reference deviates from SPEC.md
# Found by the independent implementation; both fixed in the reference, kept as regression tests.
def test_reference_rejects_an_empty_ext_type():
    for data in (b"\xc7\x00\x05", b"\x91\xc7\x00\x05", b"\x81\xa1a\xc7\x00\x05"):
        with pytest.raises(ssv2.Invalid):
            ssv2.unpack(data, 4096)
        with pytest.raises(ProtocolError):
            ref_canonical.unpack_canonical(data, 4096, "value")


def test_reference_encoder_refuses_depth_17():
    value = [1]
    for _ in range(16):
        value = [value]
    with pytest.raises(ssv2.Invalid):
        ssv2.pack(value)
    with pytest.raises(ProtocolError):
        ref_canonical.pack(value)
