"""The implementation against the committed protocol test vectors (tests/vectors/protocol_v2.json,
protocol/SPEC.md section 15; regenerate with scripts/make_test_vectors.py)."""

import dataclasses
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from seedswarm.model.digest import tensors_digest
from seedswarm.model.perturb import Term, apply, apply_reference
from seedswarm.protocol import codec
from seedswarm.protocol.aggregation import clip_bound, clipped, spread, step_gradients, step_terms
from seedswarm.protocol.admission import check_record, check_vote
from seedswarm.protocol.distributions import GAUSSIAN_TABLE_SHA256, gaussian_table_bytes, z_value
from seedswarm.protocol.errors import ProtocolError
from seedswarm.protocol.hashing import _CODEC_SALT, derive_seed, mix64, stream64, tensor_id, tensor_key
from seedswarm.protocol import globs
from seedswarm.protocol.identity import SMALL_ORDER, Signer, check_machine_id, check_ticket, leading_zero_bits, pow_digest, verify
from seedswarm.protocol.ledger import Ledger, scan_ledger
from seedswarm.protocol.messages import Vote, decode_message, decode_vote, encode_message
from seedswarm.protocol.records import Record, decode_record
from seedswarm.protocol.schedule import LRSchedule, cos_pi
from seedswarm.protocol.spec import SwarmSpec

V = json.loads((Path(__file__).parent / "vectors" / "protocol_v2.json").read_text())
h = lambda s: int(s, 16)  # noqa: E731
f32_hex = lambda x: struct.pack("<f", x).hex()  # noqa: E731
d_hex = lambda x: struct.pack(">d", x).hex()  # noqa: E731
FULL = SwarmSpec.from_json(V["spec_full"]["json"])


def test_splitmix64_matches_the_published_generator():
    # SplitMix64 seeded with 0 outputs 0xe220a8397b1dcdaf first (Vigna's reference code).
    assert stream64(0, 0) == 0xE220A8397B1DCDAF
    assert V["hashing"]["splitmix64_seed0_first_output"] == "e220a8397b1dcdaf"


def test_hashing_vectors():
    v = V["hashing"]
    for x, y in v["mix64"].items():
        assert mix64(h(x)) == h(y)
    for row in v["stream64"]:
        assert stream64(h(row["key"]), row["counter"]) == h(row["out"])
    for row in v["seed"]:
        assert derive_seed(bytes.fromhex(row["swarm_id"]), bytes.fromhex(row["machine"]), row["sample"]) == h(row["seed"])
    for name, value in v["tensor_id"].items():
        assert tensor_id(name) == h(value)
    for row in v["tensor_key"]:
        assert tensor_key(h(row["seed"]), tensor_id(row["name"])) == h(row["key"])
    assert _CODEC_SALT == h(v["codec_salt"])


def test_identity_vectors():
    for row in V["identity"]:
        s = Signer(bytes.fromhex(row["seed"]))
        assert (s.public_key.hex(), s.machine.hex()) == (row["public_key"], row["machine"])


@pytest.mark.parametrize("dist", ["rademacher", "gaussian"])
def test_z_vectors_at_the_listed_indices(dist):
    z = V["z"]
    assert [z_value(dist, h(z["key"]), i) for i in z["indices"]] == z[dist]
    assert V["gaussian_table_sha256"] == GAUSSIAN_TABLE_SHA256
    assert gaussian_table_bytes()  # the shipped table checks out against that hash


def test_codec_vectors():
    c = V["codec"]
    for row in c["encode"]:
        codes, exp = codec.encode(row["grads"], [h(s) for s in row["seeds"]], c["clip"])
        assert (codes.hex(), exp) == (row["codes"], row["scale_exp"])
    for row in c["decode"]:
        values = codec.decode(bytes.fromhex(row["codes"]), row["scale_exp"], c["clip"])
        assert values == row["values"] and [d_hex(x) for x in values] == row["values_hex"]
    with pytest.raises(ProtocolError):
        codec.decode(bytes.fromhex(c["invalid_byte"]), 0, c["clip"])
    for bad in c["refused"]:
        with pytest.raises(ValueError):
            codec.encode([float(bad)], [1], c["clip"])


def test_cos_pi_and_lr_vectors():
    for row in V["cos_pi"]:
        assert d_hex(cos_pi(row["t"])) == row["value_hex"]
    for case in V["lr"].values():
        schedule = LRSchedule(**case["schedule"])
        for row in case["values"]:
            assert d_hex(schedule(row["step"])) == row["lr_hex"]


def test_spec_vectors():
    for name in ("spec_full", "spec_minimal", "spec_widened"):
        s = V[name]
        spec = SwarmSpec.from_json(s["json"])
        assert spec.canonical_bytes().hex() == s["canonical"]
        assert spec.swarm_id_hex == s["swarm_id"]
        assert SwarmSpec.from_canonical(bytes.fromhex(s["canonical"]), bytes.fromhex(s["swarm_id"])) == spec
    assert SwarmSpec.from_json(V["spec_widened"]["same_as_json"]).swarm_id_hex == V["spec_widened"]["swarm_id"]
    assert SwarmSpec.from_json(V["spec_minimal"]["json"]).to_dict() == V["spec_minimal"]["filled"]
    with pytest.raises(ProtocolError):
        SwarmSpec.from_canonical(bytes.fromhex(V["spec_rejected"]["canonical"]))
    o = V["spec_int_in_options"]
    assert SwarmSpec.from_json(o["int_json"]).swarm_id_hex == o["int_swarm_id"] != o["float_swarm_id"]
    assert SwarmSpec.from_json(o["float_json"]).swarm_id_hex == o["float_swarm_id"]


def test_record_and_vote_vectors():
    r = V["record"]
    record = decode_record(bytes.fromhex(r["encoded"]))
    assert (record.step, record.machine.hex(), record.scale_exp, record.grads.hex(), record.ticket.hex()) == (
        r["step"], r["machine"], r["scale_exp"], r["grads"], r["ticket"])
    assert (record.body.hex(), record.rid.hex(), record.signature.hex()) == (r["body"], r["rid"], r["signature"])
    assert record.signed_message(FULL.swarm_id).hex() == r["signed_message"]
    assert check_record(FULL, record) is record
    again = Record.create(Signer(bytes.fromhex(r["signer_seed"])), FULL.swarm_id, r["step"], r["scale_exp"],
                          bytes.fromhex(r["grads"]), bytes.fromhex(r["ticket"]))
    assert again.encode().hex() == r["encoded"]  # Ed25519 signatures are deterministic
    assert [f"{derive_seed(FULL.swarm_id, record.machine, s):016x}" for s in record.samples(FULL.samples_per_step)] == r["seeds"]
    v = V["vote"]
    vote = decode_vote(bytes.fromhex(v["encoded"]))
    assert (vote.body.hex(), vote.signed_message(FULL.swarm_id).hex()) == (v["body"], v["signed_message"])
    assert check_vote(FULL, vote) is vote


def test_ticket_vectors():
    p = V["tickets"]["pow"]
    swarm, machine, nonce = bytes.fromhex(p["swarm_id"]), bytes.fromhex(p["machine"]), bytes.fromhex(p["nonce"])
    assert pow_digest(swarm, machine, nonce).hex() == p["digest"]
    assert leading_zero_bits(bytes.fromhex(p["digest"])) == p["leading_zero_bits"] >= p["bits"]
    check_ticket("open", p["bits"], b"", swarm, machine, nonce)
    m = V["tickets"]["member"]
    spec = SwarmSpec.from_json(m["spec_json"])
    assert spec.swarm_id_hex == m["swarm_id"] and spec.admission.authority == m["authority"]
    check_ticket("members", 0, bytes.fromhex(m["authority"]), spec.swarm_id, bytes.fromhex(m["machine"]),
                 bytes.fromhex(m["ticket"]))
    assert Signer(bytes.fromhex(m["authority_seed"])).sign(bytes.fromhex(m["message"])).hex() == m["ticket"]


def test_step_rule_vectors():
    s = V["step"]
    records = [decode_record(bytes.fromhex(x)) for x in s["records"]]
    assert [r.machine.hex() for r in sorted(records, key=lambda r: r.order_key)] == s["canonical_order"]
    values = [v for r in sorted(records, key=lambda r: r.order_key) for v in r.values(FULL.codec.clip)]
    assert values == s["decoded"] and clip_bound(FULL, values) == s["bound"]
    terms = step_terms(FULL, records)
    assert [(f"{t.seed:016x}", f32_hex(t.coef), f32_hex(t.decay)) for t in terms] == [
        (t["seed"], t["coef_hex"], t["decay_hex"]) for t in s["terms"]]
    z = V["step_zero_median"]
    spec = SwarmSpec.from_json(z["spec_json"])
    terms = step_terms(spec, [decode_record(bytes.fromhex(x)) for x in z["records"]])
    assert [(f"{t.seed:016x}", f32_hex(t.coef), f32_hex(t.decay)) for t in terms] == [
        (t["seed"], t["coef_hex"], t["decay_hex"]) for t in z["terms"]]


def test_ledger_vectors():
    lv = V["ledger"]
    scan = scan_ledger(bytes.fromhex(lv["file"]))
    assert scan.spec == FULL and not scan.damage and scan.torn_bytes == 0
    assert [r.rid.hex() for r in scan.records] == lv["records_in_file_order"]
    ledger = Ledger(scan.records)
    assert sorted(r.rid.hex() for r in ledger) == lv["held"]
    assert [r.rid.hex() for r in ledger.ordered()] == lv["ordered"]
    assert {str(s): [r.rid.hex() for r in ledger.applicable(s)] for s in ledger.steps()} == lv["applicable"]
    assert [[s, m.hex()] for s in ledger.steps() for m in sorted({r.machine for r in ledger.at(s)})
            if ledger.equivocated(s, m)] == lv["equivocated"]
    torn = scan_ledger(bytes.fromhex(lv["torn"]["file"]))
    assert (torn.torn_bytes, len(torn.records), torn.damage) == (lv["torn"]["torn_bytes"], lv["torn"]["records"], [])
    dmg = scan_ledger(bytes.fromhex(lv["damaged"]["file"]))
    assert [list(d) for d in dmg.damage] == lv["damaged"]["damage"]
    assert [r.rid.hex() for r in dmg.records] == lv["damaged"]["records"]


def test_digest_vector():
    d = V["digest"]
    named = []
    for t in d["tensors"]:
        dtype = getattr(torch, t["dtype"])
        raw = torch.frombuffer(bytearray.fromhex(t["data"]), dtype=torch.int16 if dtype == torch.bfloat16 else dtype)
        named.append((t["name"], (raw.view(dtype) if dtype == torch.bfloat16 else raw).reshape(t["shape"])))
    assert tensors_digest(named) == d["digest"]


def test_message_vectors():
    for kind, hexed in V["messages"].items():
        msg = decode_message(bytes.fromhex(hexed))
        assert encode_message(msg).hex() == hexed, kind


def test_dht_entry_vector():
    from hivemind.dht.validation import DHTRecord

    from seedswarm.peer.dht import Ed25519EntryValidator

    e = V["dht_entry"]
    record = DHTRecord(bytes.fromhex(e["key_id"]), bytes.fromhex(e["subkey_ser"]), bytes.fromhex(e["value_ser"]),
                       e["expiration"])
    validator = Ed25519EntryValidator(Signer(bytes.fromhex(e["signer_seed"])))
    assert Ed25519EntryValidator._message(record).hex() == e["message"]
    assert validator.sign_value(record).hex() == e["stored"]
    assert validator.validate(dataclasses.replace(record, value=bytes.fromhex(e["stored"])))
    assert not validator.validate(dataclasses.replace(record, value=bytes.fromhex(e["stored"]), expiration_time=e["expiration"] + 1))


@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_update_arithmetic_vector(impl):
    u = V["update"]
    f32 = lambda hx: np.frombuffer(bytes.fromhex(hx), dtype=np.float32)[0]  # noqa: E731
    theta = torch.tensor([f32(x) for x in u["theta"]], dtype=torch.float32)
    terms = [Term(h(t["key"]), t["coef"], t["decay"]) for t in u["terms"]]
    out = torch.empty_like(theta)
    run = apply_reference if impl == "reference" else apply
    run(theta, terms, u["dist"], perturb=(h(u["perturb"]["key"]), u["perturb"]["scale"]), out=out, offset=u["offset"])
    assert [np.float32(x).tobytes().hex() for x in theta.tolist()] == u["result"]
    assert [np.float32(x).tobytes().hex() for x in out.tolist()] == u["perturbed"]


def test_ed25519_edge_vectors():
    e = V["ed25519"]
    assert sorted(k.hex() for k in SMALL_ORDER) == e["small_order"]
    prefix = bytes.fromhex("002408011220")
    for row in e["rejected_keys"]:
        with pytest.raises(ProtocolError):
            check_machine_id(prefix + bytes.fromhex(row["key"]))
    check_machine_id(prefix + bytes.fromhex(e["accepted_key"]))
    r = e["small_order_r"]
    with pytest.raises(ProtocolError):
        verify(bytes.fromhex(r["key"]), bytes.fromhex(r["message"]), bytes.fromhex(r["signature"]))


def test_glob_vectors():
    g = V["globs"]
    for pattern in g["invalid"]:
        with pytest.raises(ProtocolError):
            globs.parse(pattern)
        with pytest.raises(ProtocolError):
            SwarmSpec.from_dict({"name": "x", "model": {"id": "m"}, "task": {"kind": "k"}, "frozen": [pattern]})
    for row in g["valid"]:
        assert [n for n in g["names"] if globs.match(n, row["pattern"])] == row["matches"], row["pattern"]


def test_redescend_step_vector():
    r = V["step_redescend"]
    spec = SwarmSpec.from_json(r["spec_json"])
    assert spec.swarm_id_hex == r["swarm_id"] and spec.aggregation.clip == "redescend"
    records = [decode_record(bytes.fromhex(x)) for x in r["records"]]
    values = [v for x in sorted(records, key=lambda x: x.order_key) for v in x.values(spec.codec.clip)]
    assert [d_hex(v) for v in values] == r["decoded_hex"] and d_hex(clip_bound(spec, values)) == r["bound_hex"]
    assert [(f"{t.seed:016x}", f32_hex(t.coef), f32_hex(t.decay)) for t in step_terms(spec, records)] == [
        (t["seed"], t["coef_hex"], t["decay_hex"]) for t in r["terms"]]


def test_rms_step_vector():
    r = V["step_rms"]
    spec = SwarmSpec.from_json(r["spec_json"])
    assert spec.swarm_id_hex == r["swarm_id"] and spec.aggregation.normalize == "rms"
    records = [decode_record(bytes.fromhex(x)) for x in r["records"]]
    ordered = sorted(records, key=lambda x: x.order_key)
    values = clipped(spec, [x.values(spec.codec.clip) for x in ordered])
    assert [d_hex(v) for vs in values for v in vs] == r["clipped_hex"] and d_hex(spread(values)) == r["rms_hex"]
    assert [d_hex(v) for vs in step_gradients(spec, ordered) for v in vs] == r["normalized_hex"]
    assert [(f"{t.seed:016x}", f32_hex(t.coef), f32_hex(t.decay)) for t in step_terms(spec, records)] == [
        (t["seed"], t["coef_hex"], t["decay_hex"]) for t in r["terms"]]


def test_optional_spec_field_vector():
    o = V["spec_optional"]
    explicit = SwarmSpec.from_json(o["json_explicit_default"])
    assert explicit.swarm_id_hex == o["swarm_id_default"] and explicit.canonical_bytes().hex() == o["canonical_default"]
    with pytest.raises(ProtocolError, match="canonical"):
        SwarmSpec.from_canonical(bytes.fromhex(o["rejected_canonical"]))
    rms = SwarmSpec.from_json(o["json_rms"])
    assert rms.swarm_id_hex == o["swarm_id_rms"] and rms.canonical_bytes().hex() == o["canonical_rms"]
    assert SwarmSpec.from_canonical(bytes.fromhex(o["canonical_rms"])) == rms


def test_tally_vector():
    from seedswarm.peer.core.core import CoreConfig
    from seedswarm.peer.core.trust import Votes as VoteBook

    t = V["tally"]
    assert CoreConfig().standing_cap == t["cap"]
    me = Signer(bytes([0x40]) * 32).machine
    for case in t["cases"]:
        book, stand = VoteBook(), {me: case["own_standing"]}
        for i, v in enumerate(case["votes"]):
            signer = Signer(bytes([0x41 + i]) * 32)
            assert signer.machine.hex() == v["machine"]
            book.add(Vote.create(signer, bytes(32), 10, bytes.fromhex(v["digest"])))
            stand[signer.machine] = v["standing"]
        got = book.tally(10, lambda m: min(stand.get(m, 0), t["cap"]), bytes.fromhex(case["own_digest"]), me,
                         t["established"])
        assert (got.winner.hex() if got.winner else None, got.weight, got.total, [m.hex() for m in got.supporters],
                got.split, got.leader.hex(), [m.hex() for m in got.leader_supporters]) == (
            case["winner"], case["weight"], case["total"], case["supporters"], case["split"], case["leader"],
            case["leader_supporters"])
    assert CoreConfig().standing_cap // 2 == t["established"]


@pytest.mark.parametrize("impl", ["reference", "fast"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_update_16bit_vector(impl, dtype):
    u = V["update_16bit"][dtype]
    theta = torch.frombuffer(bytearray.fromhex(u["theta"]), dtype=torch.int16).view(getattr(torch, dtype)).clone()
    run = apply_reference if impl == "reference" else apply
    run(theta, [Term(h(t["key"]), t["coef"], t["decay"]) for t in u["terms"]], u["dist"], offset=u["offset"])
    assert theta.view(torch.int16).numpy().astype("<i2").tobytes().hex() == u["result"]


def test_lowrank_vectors():
    """SPEC 5.1: z by definition and by the engine's matrix product, an update, the spec field."""
    from seedswarm.model.lowrank import apply as lowrank_apply, z_matrix
    from seedswarm.protocol.distributions import lowrank_z_value

    zv = V["z_lowrank"]
    shape = tuple(zv["shape"])
    for rank, want in zv["ranks"].items():
        assert [f32_hex(lowrank_z_value(h(zv["key"]), shape, int(rank), i)) for i in range(15)] == want["z_hex"]
        assert [f32_hex(x) for x in z_matrix(h(zv["key"]), shape, int(rank)).flatten().tolist()] == want["z_hex"]
    u = V["update_lowrank"]
    theta = torch.tensor([struct.unpack("<f", bytes.fromhex(x))[0] for x in u["theta"]]).view(*u["shape"])
    out = torch.empty(theta.numel())
    terms = [Term(h(t["key"]), t["coef"], t["decay"]) for t in u["terms"]]
    lowrank_apply(theta, terms, u["rank"], perturb=(h(u["perturb"]["key"]), u["perturb"]["scale"]), out=out)
    assert [f32_hex(x) for x in theta.flatten().tolist()] == u["result"]
    assert [f32_hex(x) for x in out.tolist()] == u["perturbed"]
    s = V["spec_lowrank"]
    spec = SwarmSpec.from_json(s["json"])
    assert spec.perturbation_rank == 4 and spec.canonical_bytes().hex() == s["canonical"] and spec.swarm_id_hex == s["swarm_id"]
    assert SwarmSpec.from_canonical(bytes.fromhex(s["canonical"])).swarm_id_hex == s["swarm_id"]
    assert SwarmSpec.from_json(s["json_zero"]).swarm_id_hex == s["swarm_id_zero"]
    for text in s["rejected_json"]:
        with pytest.raises(ProtocolError):
            SwarmSpec.from_json(text)


def test_pool_vectors():
    """SPEC 5.2 and 10.4: pool indices and seeds, the optional field, a pooled step and its update."""
    from seedswarm.model.lowrank import apply as lowrank_apply
    from seedswarm.protocol.aggregation import pool_sums
    from seedswarm.protocol.pool import pool_index, pool_seed

    p = V["seed_pool"]
    swarm = bytes.fromhex(p["swarm_id"])
    for row in p["indices"]:
        assert pool_index(swarm, bytes.fromhex(row["machine"]), row["sample"], row["size"]) == row["index"]
    for row in p["seeds"]:
        assert f"{pool_seed(swarm, row['step'], row['index']):016x}" == row["seed"]
    s = V["spec_pool"]
    spec = SwarmSpec.from_json(s["json"])
    assert spec.seed_pool == 16 and spec.canonical_bytes().hex() == s["canonical"] and spec.swarm_id_hex == s["swarm_id"]
    assert SwarmSpec.from_canonical(bytes.fromhex(s["canonical"])).swarm_id_hex == s["swarm_id"]
    assert SwarmSpec.from_json(s["json_zero"]).swarm_id_hex == s["swarm_id_zero"]
    for text in s["rejected_json"]:
        with pytest.raises(ProtocolError):
            SwarmSpec.from_json(text)
    u = V["update_pool"]
    spec = SwarmSpec.from_json(u["spec_json"])
    assert spec.swarm_id_hex == u["swarm_id"]
    records = sorted((decode_record(bytes.fromhex(x)) for x in u["records"]), key=lambda r: r.order_key)
    g2 = step_gradients(spec, records)
    assert [struct.pack(">d", x).hex() for gs in g2 for x in gs] == u["normalized_hex"]
    assert [pool_index(spec.swarm_id, r.machine, j, spec.seed_pool) for r in records for j in r.samples(2)] == u["indices"]
    sums = pool_sums(spec, records, g2)
    assert [{"index": k, "sum_hex": struct.pack(">d", sums[k]).hex()} for k in sorted(sums)] == u["sums"]
    terms = step_terms(spec, records)
    assert [(f"{t.seed:016x}", f32_hex(t.coef), f32_hex(t.decay)) for t in terms] == [
        (t["seed"], t["coef_hex"], t["decay_hex"]) for t in u["terms"]]
    t = u["tensor"]
    theta = torch.tensor([struct.unpack("<f", bytes.fromhex(x))[0] for x in t["theta"]]).view(*t["shape"])
    lowrank_apply(theta, [Term(tensor_key(x.seed, tensor_id(t["name"])), x.coef, x.decay) for x in terms], spec.perturbation_rank)
    assert [f32_hex(x) for x in theta.flatten().tolist()] == t["result"]
