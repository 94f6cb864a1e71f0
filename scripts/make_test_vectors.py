"""Write tests/vectors/protocol_v2.json: test vectors for re-implementers of the protocol.

Every value comes from the reference implementation (protocol/, model/perturb.py,
model/digest.py, peer/dht.py); protocol/SPEC.md section 15 says what each vector covers.
The vectors are committed; tests/test_vectors.py checks the implementation against them and
tests/test_spec_independent.py checks an implementation written from SPEC.md alone, so a
change to the wire format cannot slip in unnoticed. Rerun only for a new protocol version:

    python scripts/make_test_vectors.py

Floats are written twice where bits matter: as JSON numbers (shortest round-trip form) and
as hex of their IEEE bytes (``*_hex``: 8 bytes big-endian for doubles, 4 bytes
little-endian for float32, as the update arithmetic stores them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import torch

from seedswarm.model.digest import tensors_digest
from seedswarm.peer.dht import Ed25519EntryValidator, owner_subkey
from seedswarm.protocol import codec
from seedswarm.protocol.aggregation import clip_bound, clipped, spread, step_gradients, step_terms
from seedswarm.protocol.directory import MemberInfo, encode_entry, member_bucket, member_key
from seedswarm.protocol.distributions import GAUSSIAN, GAUSSIAN_TABLE_SHA256, RADEMACHER, lowrank_z_value, z_value
from seedswarm.protocol.hashing import _CODEC_SALT, derive_seed, mix64, stream64, tensor_id, tensor_key
from seedswarm.peer.core.trust import Votes as VoteBook
from seedswarm.protocol import globs
from seedswarm.protocol.canonical import pack
from seedswarm.protocol.errors import ProtocolError
from seedswarm.protocol.identity import (SMALL_ORDER, Signer, check_machine_id, issue_member_ticket, leading_zero_bits,
                                         member_message, pow_digest, solve_pow, verify)
from seedswarm.protocol.ledger import HEADER, Ledger, encode_ledger, entry, scan_ledger
from seedswarm.protocol.messages import (Bye, Gossip, Peers, RangeReply, RangeRequest, Status, Vote, Votes,
                                         encode_message)
from seedswarm.protocol.records import Record
from seedswarm.protocol.schedule import LRSchedule, cos_pi
from seedswarm.protocol.spec import SwarmSpec

OUT = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "protocol_v2.json"

#: The element indices of the z vectors (the exact list, not a range): both lanes of the
#: first words, every bit of the first two rademacher words, a lane/word boundary, and far ones.
Z_INDICES = list(range(70)) + [127, 128, 4095, 4096, 65535, 10**9, 2**40 + 3]
SEED_A = bytes(range(32))                    # machine A's Ed25519 private key seed
SEED_B = bytes(range(32, 64))
SEED_C = bytes(range(64, 96))
AUTHORITY_SEED = bytes([0xA5]) * 32


def d_hex(x: float) -> str:
    return struct.pack(">d", x).hex()


def f_hex(x: float) -> str:
    return struct.pack("<f", x).hex()


def full_spec_json() -> dict:
    """A spec with every field set, most of them away from their defaults."""
    return {
        "name": "vectors-full", "protocol_version": 2,
        "model": {"id": "sentence-transformers/all-MiniLM-L6-v2", "revision": "main", "digest": "ab" * 32,
                  "dtype": "float32"},
        "task": {"kind": "label-prompts",
                 "options": {"prompts": ["This is negative.", "This is positive."], "scale": 20.0, "k": 3,
                             "flag": True, "none": None, "nested": {"z": [], "a": {"\u00e9": -1}}}},
        "trainable": ["encoder.*", "pooler.dense.weight"], "frozen": ["*.embeddings.*"],
        "perturbation": "gaussian", "eps": 0.002,
        "lr": {"base": 0.0003, "kind": "cosine", "warmup_steps": 5, "total_steps": 200, "min_ratio": 0.1},
        "weight_decay": 0.01, "no_decay": ["*bias", "*LayerNorm*"],
        "codec": {"name": "int8-sr-pow2", "clip": 64.0},
        "aggregation": {"clip": "median", "clip_factor": 2.0},
        "admission": {"mode": "open", "pow_bits": 8, "authority": ""},
        "samples_per_step": 2, "batch_size": 16, "digest_every": 5, "delay": 2, "late_window": 6,
        "future_window": 5,
    }


def spec_vectors() -> dict:
    full = full_spec_json()
    spec = SwarmSpec.from_dict(full)
    minimal = {"name": "m", "model": {"id": "tiny"}, "task": {"kind": "lm"}}
    ms = SwarmSpec.from_dict(minimal)
    widened = dict(full, eps=1, weight_decay=0, lr=dict(full["lr"], base=0, min_ratio=1),
                   codec=dict(full["codec"], clip=64), aggregation=dict(full["aggregation"], clip_factor=2))
    ws = SwarmSpec.from_dict(widened)
    as_floats = dict(full, eps=1.0, weight_decay=0.0, lr=dict(full["lr"], base=0.0, min_ratio=1.0))
    # canonical bytes with an integer where the float 1.0 belongs: rejected (not what re-encoding gives)
    bad = ms.canonical_bytes().replace(b"\xa3eps\xcb" + struct.pack(">d", 0.001), b"\xa3eps\x01")
    assert bad != ms.canonical_bytes()
    return {
        "spec_full": {"json": json.dumps(full, sort_keys=True), "canonical": spec.canonical_bytes().hex(),
                      "swarm_id": spec.swarm_id_hex},
        "spec_minimal": {"json": json.dumps(minimal), "canonical": ms.canonical_bytes().hex(),
                         "swarm_id": ms.swarm_id_hex, "filled": ms.to_dict()},
        "spec_widened": {"json": json.dumps(widened, sort_keys=True), "same_as_json": json.dumps(
            dict(as_floats, codec=dict(full["codec"], clip=64.0), aggregation=dict(full["aggregation"], clip_factor=2.0)),
            sort_keys=True), "swarm_id": ws.swarm_id_hex, "canonical": ws.canonical_bytes().hex()},
        "spec_rejected": {"why": "an integer in the float field eps (canonical bytes must re-encode to themselves)",
                          "canonical": bad.hex()},
        "spec_int_in_options": {
            "why": "task.options values are hashed as given: 20 and 20.0 are different swarms",
            "int_json": json.dumps(dict(minimal, task={"kind": "lm", "options": {"scale": 20}})),
            "float_json": json.dumps(dict(minimal, task={"kind": "lm", "options": {"scale": 20.0}})),
            "int_swarm_id": SwarmSpec.from_dict(dict(minimal, task={"kind": "lm", "options": {"scale": 20}})).swarm_id_hex,
            "float_swarm_id": SwarmSpec.from_dict(dict(minimal, task={"kind": "lm", "options": {"scale": 20.0}})).swarm_id_hex,
        },
    }, spec


def lr_vectors() -> dict:
    schedules = {
        "constant_no_warmup": LRSchedule(base=1e-4),
        "constant_warmup": LRSchedule(base=1e-4, warmup_steps=3),
        "linear": LRSchedule(base=0.01, kind="linear", warmup_steps=0, total_steps=7, min_ratio=0.25),
        "cosine": LRSchedule(base=3e-4, kind="cosine", warmup_steps=10, total_steps=100, min_ratio=0.1),
    }
    steps = [0, 1, 2, 3, 5, 6, 7, 9, 10, 11, 40, 55, 99, 100, 101, 500, 2**32, 2**53 + 1, 2**64 - 1]
    out = {}
    for name, s in schedules.items():
        rows = [{"step": t, "lr": s(t), "lr_hex": d_hex(s(t))} for t in steps]
        out[name] = {"schedule": dataclasses.asdict(s), "values": rows}
    return out


def main() -> None:
    spec_v, spec = spec_vectors()
    swarm = spec.swarm_id
    a, b, c = Signer(SEED_A), Signer(SEED_B), Signer(SEED_C)
    authority = Signer(AUTHORITY_SEED)
    n = spec.samples_per_step

    # --- hashing, z, codec -----------------------------------------------------------------
    seeds = [derive_seed(swarm, a.machine, s) for s in range(4)]
    grads = [3.25, -0.4, 0.0, 70.0]
    codes, exp = codec.encode(grads, seeds, 64.0)
    small = [1e-3, -2.5e-4, 7.7e-4]
    small_codes, small_exp = codec.encode(small, seeds[:3], 64.0)
    hashing = {
        "splitmix64_seed0_first_output": f"{stream64(0, 0):016x}",
        "mix64": {f"{x:016x}": f"{mix64(x):016x}" for x in (0, 1, 0xFFFFFFFFFFFFFFFF, 0x0123456789ABCDEF)},
        "stream64": [{"key": f"{k:016x}", "counter": i, "out": f"{stream64(k, i):016x}"}
                     for k, i in ((7, 0), (7, 1), (1 << 63, 12345))],
        "codec_salt": f"{_CODEC_SALT:016x}",
        "tensor_id": {name: f"{tensor_id(name):016x}" for name in
                      ("embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.bias", "\u00e9")},
        "tensor_key": [{"seed": f"{seeds[0]:016x}", "name": "encoder.layer.0.attention.self.query.bias",
                        "key": f"{tensor_key(seeds[0], tensor_id('encoder.layer.0.attention.self.query.bias')):016x}"}],
        "seed": [{"swarm_id": swarm.hex(), "machine": a.machine.hex(), "sample": s,
                  "seed": f"{derive_seed(swarm, a.machine, s):016x}"} for s in (0, 1, 2**40, 2**64 - 1)],
    }
    zkey = 0x0123456789ABCDEF
    zvec = {"key": f"{zkey:016x}", "indices": Z_INDICES,
            **{d: [z_value(d, zkey, i) for i in Z_INDICES] for d in (RADEMACHER, GAUSSIAN)},
            "gaussian_hex": [f_hex(z_value(GAUSSIAN, zkey, i)) for i in Z_INDICES]}
    codec_v = {
        "clip": 64.0,
        "encode": [{"grads": grads, "seeds": [f"{s:016x}" for s in seeds], "scale_exp": exp, "codes": codes.hex()},
                   {"grads": small, "seeds": [f"{s:016x}" for s in seeds[:3]], "scale_exp": small_exp,
                    "codes": small_codes.hex()}],
        "decode": [{"codes": cs.hex(), "scale_exp": e, "values": codec.decode(cs, e, 64.0),
                    "values_hex": [d_hex(v) for v in codec.decode(cs, e, 64.0)]}
                   for cs, e in ((codes, exp), (small_codes, small_exp), (bytes([0x81, 0x7F, 0x00, 0xFF, 0x01]), 64))],
        "invalid_byte": "80",
        "refused": ["nan", "inf", "-inf"],
    }

    # --- identity, record, vote, tickets -------------------------------------------------------
    ticket_a = solve_pow(swarm, a.machine, spec.admission.pow_bits)
    rec = Record.create(a, swarm, 7, small_exp, small_codes[:n], ticket_a)
    vote = Vote.create(a, swarm, 10, bytes(range(100, 132)), revision=1, ticket=ticket_a)
    members_spec = SwarmSpec.from_dict(dict(full_spec_json(), admission={
        "mode": "members", "pow_bits": 0, "authority": authority.public_key.hex()}))
    member_ticket = issue_member_ticket(authority, members_spec.swarm_id, a.machine)
    identity = [{"seed": s.seed.hex(), "public_key": s.public_key.hex(), "machine": s.machine.hex()}
                for s in (a, b, c, authority)]
    record_v = {"swarm_id": swarm.hex(), "signer_seed": SEED_A.hex(), "step": rec.step, "machine": rec.machine.hex(),
                "scale_exp": rec.scale_exp, "grads": rec.grads.hex(), "ticket": rec.ticket.hex(),
                "body": rec.body.hex(), "rid": rec.rid.hex(), "signed_message": rec.signed_message(swarm).hex(),
                "signature": rec.signature.hex(), "encoded": rec.encode().hex(),
                "sample_counters": list(rec.samples(n)),
                "seeds": [f"{derive_seed(swarm, rec.machine, s):016x}" for s in rec.samples(n)]}
    vote_v = {"swarm_id": swarm.hex(), "step": vote.step, "digest": vote.digest.hex(), "revision": vote.revision,
              "machine": vote.machine.hex(), "ticket": vote.ticket.hex(), "body": vote.body.hex(),
              "signed_message": vote.signed_message(swarm).hex(), "signature": vote.signature.hex(),
              "encoded": vote.encode().hex()}
    tickets = {
        "pow": {"swarm_id": swarm.hex(), "machine": a.machine.hex(), "bits": spec.admission.pow_bits,
                "nonce": ticket_a.hex(), "digest": pow_digest(swarm, a.machine, ticket_a).hex(),
                "leading_zero_bits": leading_zero_bits(pow_digest(swarm, a.machine, ticket_a))},
        "member": {"authority_seed": AUTHORITY_SEED.hex(), "authority": authority.public_key.hex(),
                   "spec_json": json.dumps(members_spec.to_dict(), sort_keys=True),
                   "swarm_id": members_spec.swarm_id_hex, "machine": a.machine.hex(),
                   "message": member_message(members_spec.swarm_id, a.machine).hex(), "ticket": member_ticket.hex()},
    }

    # --- one step: 3 records x 2 samples, machine C an outlier ----------------------------------
    records = [
        Record.create(a, swarm, 12, 0, bytes([10, 0xF0]), solve_pow(swarm, a.machine, 8)),   # 10, -16
        Record.create(b, swarm, 12, 0, bytes([0x05, 0x0C]), solve_pow(swarm, b.machine, 8)),  # 5, 12
        Record.create(c, swarm, 12, 0, bytes([0x81, 0x7F]), solve_pow(swarm, c.machine, 8)),  # -127, 127
    ]
    ordered = sorted(records, key=lambda r: r.machine)
    values = [v for r in ordered for v in r.values(spec.codec.clip)]
    terms = step_terms(spec, records)
    step_v = {
        "spec": "spec_full", "swarm_id": swarm.hex(), "step": 12, "records": [r.encode().hex() for r in records],
        "canonical_order": [r.machine.hex() for r in ordered], "decoded": values,
        "median": sorted(abs(v) for v in values)[(len(values) - 1) // 2], "bound": clip_bound(spec, values),
        "lr": spec.lr(12), "lr_hex": d_hex(spec.lr(12)),
        "terms": [{"seed": f"{t.seed:016x}", "coef_hex": f_hex(t.coef), "decay_hex": f_hex(t.decay),
                   "coef": t.coef, "decay": t.decay} for t in terms],
    }
    zero_spec = SwarmSpec.from_dict(dict(full_spec_json(), samples_per_step=1, admission={"mode": "open"},
                                         lr={"base": 0.001}))
    zrecs = [Record.create(s, zero_spec.swarm_id, 0, 0, bytes([q])) for s, q in ((a, 0), (b, 0), (c, 0x05), (Signer(bytes(32)), 0xFB))]
    zterms = step_terms(zero_spec, zrecs)
    zero_v = {"spec_json": json.dumps(zero_spec.to_dict(), sort_keys=True), "swarm_id": zero_spec.swarm_id_hex,
              "records": [r.encode().hex() for r in zrecs], "bound_hex": d_hex(clip_bound(zero_spec, [v for r in zrecs for v in r.values(64.0)])),
              "terms": [{"seed": f"{t.seed:016x}", "coef_hex": f_hex(t.coef), "decay_hex": f_hex(t.decay)} for t in zterms]}

    # --- update arithmetic (unchanged since v1) --------------------------------------------------
    update_v = update_vector()

    # --- ledger file ------------------------------------------------------------------------
    dup = records[0]
    equiv = Record.create(b, swarm, 12, 0, bytes([0x06, 0x0C]), records[1].ticket)  # a second body for (12, B)
    later_b = Record.create(b, swarm, 13, 0, bytes([1, 2]), records[1].ticket)     # applied: only (12, B) is void
    later_a = Record.create(a, swarm, 13, 0, bytes([3, 4]), records[0].ticket)
    file_records = [records[0], records[1], records[2], dup, equiv, later_b, later_a]
    data = encode_ledger(spec, file_records)
    ledger = Ledger(file_records)
    spec_entry_end = len(HEADER) + len(entry(spec.canonical_bytes()))
    offsets = [spec_entry_end]
    for r in file_records[:-1]:
        offsets.append(offsets[-1] + len(entry(r.encode())))
    torn = data[:-5]
    damaged = bytearray(data)
    damaged[offsets[2] + 20] ^= 0x01          # one bit in the third record's payload
    scan_t, scan_d = scan_ledger(torn), scan_ledger(bytes(damaged))
    ledger_v = {
        "spec": "spec_full", "file": data.hex(), "entry_offsets": offsets,
        "records_in_file_order": [r.rid.hex() for r in file_records],
        "held": sorted(r.rid.hex() for r in ledger),
        "equivocated": [[s, m.hex()] for s in ledger.steps() for m in sorted({r.machine for r in ledger.at(s)})
                        if ledger.equivocated(s, m)],
        "applicable": {str(s): [r.rid.hex() for r in ledger.applicable(s)] for s in ledger.steps()},
        "ordered": [r.rid.hex() for r in ledger.ordered()],
        "torn": {"file": torn.hex(), "torn_bytes": scan_t.torn_bytes, "records": len(scan_t.records),
                 "damage": scan_t.damage},
        "damaged": {"file": bytes(damaged).hex(), "torn_bytes": scan_d.torn_bytes,
                    "records": [r.rid.hex() for r in scan_d.records], "damage": scan_d.damage},
    }

    # --- weight digest ----------------------------------------------------------------------
    t32 = torch.tensor([[1.0, -2.5, 3.0e-8], [0.0, -0.0, 1e30]], dtype=torch.float32)
    tbf = torch.tensor([1.0, -3.140625, 2.0 ** -130], dtype=torch.bfloat16)
    t0 = torch.tensor(0.5, dtype=torch.float32)
    named = [("layer.weight", t32), ("emb.bias", tbf), ("scalar", t0)]
    digest_v = {"tensors": [{"name": name, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                             "data": (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).contiguous().numpy().tobytes().hex()}
                            for name, t in named], "digest": tensors_digest(named)}

    # --- link messages ------------------------------------------------------------------------
    msgs = {
        "status": Status(42, 1, 40, 1234), "gossip": Gossip((rec,), (records[1].rid,), (records[2].rid,), ((c.machine, 13),)),
        "range": RangeRequest(10, 74), "ranged": RangeReply(12, 13, False, (records[0],)),
        "votes": Votes((vote,)), "peers": Peers((b.machine,), (c.machine, authority.machine)), "bye": Bye(),
    }
    messages_v = {k: encode_message(m).hex() for k, m in msgs.items()}

    # --- a signed DHT entry ---------------------------------------------------------------------
    info = MemberInfo(step=5, status="training", name="peer-a", loss=0.69, step_time_ms=1500, checkpoint=0,
                      sent=1000, received=2000, heals=0, rejected=1, suspects={c.machine.hex(): 2}, reach="public",
                      relay="", peers=3)
    value = encode_entry("member", swarm, info)
    key = member_key(swarm, member_bucket(a.machine))
    from hivemind.dht.routing import DHTID
    from hivemind.dht.validation import DHTRecord
    from hivemind.utils import MSGPackSerializer

    expiration = 1767225600.25
    validator = Ed25519EntryValidator(a)
    drec = DHTRecord(DHTID.generate(source=key).to_bytes(), MSGPackSerializer.dumps(owner_subkey(a.machine)),
                     MSGPackSerializer.dumps(value), expiration)
    stored = validator.sign_value(drec)
    assert validator.validate(dataclasses.replace(drec, value=stored))
    dht_v = {"key": key, "bucket": member_bucket(a.machine), "key_id": drec.key.hex(), "subkey": owner_subkey(a.machine).decode(),
             "subkey_ser": drec.subkey.hex(), "entry": value.hex(), "value_ser": drec.value.hex(),
             "expiration": expiration, "message": Ed25519EntryValidator._message(drec).hex(),
             "stored": stored.hex(), "signer_seed": SEED_A.hex()}

    vectors = {
        "protocol_version": 2,
        "notes": "SPEC.md section 15. *_hex of a double: 8 bytes big-endian; of a float32: 4 bytes little-endian. "
                 "z vectors: element i of the tensor for each i in z.indices (that exact list).",
        "identity": identity, "hashing": hashing, "gaussian_table_sha256": GAUSSIAN_TABLE_SHA256, "z": zvec,
        "codec": codec_v,
        "cos_pi": [{"t": t, "t_hex": d_hex(t), "value": cos_pi(t), "value_hex": d_hex(cos_pi(t))}
                   for t in (0.0, 0.1, 0.25, 1 / 3, 0.5, 0.5000000000000001, 0.75, 0.9, 0.999, 1.0)],
        "lr": lr_vectors(), **spec_v, "record": record_v, "vote": vote_v, "tickets": tickets,
        "step": step_v, "step_zero_median": zero_v, "update": update_v, "ledger": ledger_v, "digest": digest_v,
        "messages": messages_v, "dht_entry": dht_v, "ed25519": ed25519_vector(a),
        "globs": globs_vector(), "step_redescend": redescend_vector(a, b, c), "tally": tally_vector(),
        "update_16bit": update_16bit_vector(), "step_rms": rms_vector(a, b, c), "spec_optional": optional_vector(),
        "z_lowrank": lowrank_z_vector(), "update_lowrank": lowrank_update_vector(), "spec_lowrank": lowrank_spec_vector(),
        "seed_pool": pool_vector(a, b), "spec_pool": pool_spec_vector(), "update_pool": pool_update_vector(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(vectors, indent=1, ensure_ascii=True) + "\n")
    print(f"wrote {OUT}")


# --- Ed25519 edges (SPEC section 2) ------------------------------------------------------------
_P = 2 ** 255 - 19
_L = 2 ** 252 + 27742317777372353535851937790883648493


def _rejected_machine(key: bytes) -> bool:
    try:
        check_machine_id(bytes.fromhex("002408011220") + key)
        return False
    except ProtocolError:
        return True


def ed25519_vector(a: Signer) -> dict:
    """Machine ids that must be refused, and a signature OpenSSL alone would accept: R is the
    identity point (small order) and S = k * a mod L, so [S]B - [k]A = R exactly."""
    rejected = [
        ("y = p (non-canonical encoding of y = 0)", _P.to_bytes(32, "little")),
        ("y = p + 1 (non-canonical encoding of the identity)", (_P + 1).to_bytes(32, "little")),
        ("x = 0 with the sign bit set (y = 1)", (1 | 1 << 255).to_bytes(32, "little")),
        ("no curve point has y = 2", (2).to_bytes(32, "little")),
    ] + [("small order", k) for k in sorted(SMALL_ORDER)]
    assert all(_rejected_machine(k) for _, k in rejected) and not _rejected_machine(a.public_key)
    h = hashlib.sha512(a.seed).digest()
    scalar = int.from_bytes(h[:32], "little") & ((1 << 254) - 8) | (1 << 254)
    message = b"seedswarm vector: small-order R"
    r_enc = bytes([1]) + bytes(31)  # the identity point
    k = int.from_bytes(hashlib.sha512(r_enc + a.public_key + message).digest(), "little") % _L
    sig = r_enc + (k * scalar % _L).to_bytes(32, "little")
    try:
        verify(a.public_key, message, sig)
        raise AssertionError("the small-order R signature verified")
    except ProtocolError:
        pass
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    Ed25519PublicKey.from_public_bytes(a.public_key).verify(sig, message)  # OpenSSL alone accepts it
    return {"small_order": sorted(k.hex() for k in SMALL_ORDER),
            "rejected_keys": [{"why": why, "key": key.hex()} for why, key in rejected],
            "accepted_key": a.public_key.hex(),
            "small_order_r": {"key": a.public_key.hex(), "message": message.hex(), "signature": sig.hex(),
                              "why": "R is the identity point; OpenSSL's cofactorless check alone would accept it"}}


# --- name patterns (SPEC section 10.1, Appendix B) ---------------------------------------------
GLOB_NAMES = ["encoder.layer.0.weight", "encoder.layer.10.bias", "a", "b", "-", "]", "!", "^", "\\", "[", "ab",
              "a.b", "", "\n", "x[y", "e", "c", "\u00e9"]
GLOB_PATTERNS = ["*", "*.weight", "encoder.*.bias", "?", "a?b", "[ab]", "[!ab]", "[a-c-e]", "[-a]", "[a-]", "[]]",
                 "[!]]", "[]-a]", "[!!]", "[--0]", "[\\]", "[^a]", "x[[]y", "**", "a*", "*b", "]", "!", "[a-a]",
                 "[\u00e0-\u00ff]", "?*?"]
GLOB_INVALID = ["a[", "[", "[]", "[!]", "[!", "[z-a]", "[a-c-b-a]", "x[b-a]y", "[b-a]*"]


def globs_vector() -> dict:
    for p in GLOB_INVALID:
        try:
            globs.parse(p)
            raise AssertionError(f"{p!r} parsed")
        except ProtocolError:
            pass
    return {"names": GLOB_NAMES, "invalid": GLOB_INVALID,
            "valid": [{"pattern": p, "matches": [n for n in GLOB_NAMES if globs.match(n, p)]} for p in GLOB_PATTERNS]}


def redescend_vector(a: Signer, b: Signer, c: Signer) -> dict:
    """One step under the default rule (redescend, factor 2): an outlier counts b*b/|g|."""
    spec = SwarmSpec.from_dict(dict(full_spec_json(), admission={"mode": "open"}, aggregation={}))
    assert (spec.aggregation.clip, spec.aggregation.clip_factor) == ("redescend", 2.0)
    d = Signer(bytes(range(96, 128)))
    recs = [Record.create(a, spec.swarm_id, 3, 2, bytes([10, 0xF0])), Record.create(b, spec.swarm_id, 3, 2, bytes([5, 12])),
            Record.create(c, spec.swarm_id, 3, 0, bytes([0x81, 0x7F])), Record.create(d, spec.swarm_id, 3, 1, bytes([0, 0xF9]))]
    ordered = sorted(recs, key=lambda r: r.machine)
    values = [v for r in ordered for v in r.values(spec.codec.clip)]
    terms = step_terms(spec, recs)
    return {"spec_json": json.dumps(spec.to_dict(), sort_keys=True), "swarm_id": spec.swarm_id_hex,
            "records": [r.encode().hex() for r in recs], "decoded_hex": [d_hex(v) for v in values],
            "bound_hex": d_hex(clip_bound(spec, values)),
            "terms": [{"seed": f"{t.seed:016x}", "coef_hex": f_hex(t.coef), "decay_hex": f_hex(t.decay)} for t in terms]}


def rms_vector(a: Signer, b: Signer, c: Signer) -> dict:
    """The step of ``step_redescend`` under ``aggregation.normalize = "rms"``: clipped values,
    their root mean square (section 10.3) and the terms."""
    spec = SwarmSpec.from_dict(dict(full_spec_json(), admission={"mode": "open"}, aggregation={"normalize": "rms"}))
    d = Signer(bytes(range(96, 128)))
    recs = [Record.create(a, spec.swarm_id, 3, 2, bytes([10, 0xF0])), Record.create(b, spec.swarm_id, 3, 2, bytes([5, 12])),
            Record.create(c, spec.swarm_id, 3, 0, bytes([0x81, 0x7F])), Record.create(d, spec.swarm_id, 3, 1, bytes([0, 0xF9]))]
    ordered = sorted(recs, key=lambda r: r.machine)
    clipped_values = clipped(spec, [r.values(spec.codec.clip) for r in ordered])
    terms = step_terms(spec, recs)
    return {"spec_json": json.dumps(spec.to_dict(), sort_keys=True), "swarm_id": spec.swarm_id_hex,
            "records": [r.encode().hex() for r in recs],
            "clipped_hex": [d_hex(v) for vs in clipped_values for v in vs], "rms_hex": d_hex(spread(clipped_values)),
            "normalized_hex": [d_hex(v) for vs in step_gradients(spec, ordered) for v in vs],
            "terms": [{"seed": f"{t.seed:016x}", "coef_hex": f_hex(t.coef), "decay_hex": f_hex(t.decay)} for t in terms]}


def optional_vector() -> dict:
    """Optional fields (section 4.1): at their default they are left out of the canonical bytes
    (the swarm id of a spec that does not use them is unchanged); canonical bytes that carry one
    at its default must be rejected."""
    minimal = {"name": "vectors-minimal", "model": {"id": "m"}, "task": {"kind": "label-prompts"}}
    plain = SwarmSpec.from_dict(minimal)
    explicit = SwarmSpec.from_dict(dict(minimal, aggregation={"normalize": "none"}))
    assert explicit.swarm_id == plain.swarm_id
    full = dict(plain.to_dict())
    full["aggregation"] = dict(full["aggregation"], normalize="none")
    bad = pack(full)
    try:
        SwarmSpec.from_canonical(bad)
        raise AssertionError("an optional field at its default was accepted in canonical bytes")
    except ProtocolError:
        pass
    rms = SwarmSpec.from_dict(dict(minimal, aggregation={"normalize": "rms"}))
    return {"json_explicit_default": json.dumps(dict(minimal, aggregation={"normalize": "none"})),
            "swarm_id_default": plain.swarm_id_hex, "canonical_default": plain.canonical_bytes().hex(),
            "rejected_canonical": bad.hex(),
            "json_rms": json.dumps(dict(minimal, aggregation={"normalize": "rms"})),
            "swarm_id_rms": rms.swarm_id_hex, "canonical_rms": rms.canonical_bytes().hex()}


def tally_vector() -> dict:
    """SPEC section 13 (local policy, seedswarm's): weights min(standing, 16), own digest
    max(min(own standing, 16), 1), established voters from weight 8; the heaviest digest wins
    with more than half of the weight and of the established voters; otherwise the leader is
    the digest with the most established voters, ties to its smallest established voter."""
    signers = [Signer(bytes([0x40 + i]) * 32) for i in range(6)]
    me = signers[0]
    swarm = bytes(32)
    d1, d2 = bytes([1]) * 32, bytes([2]) * 32
    cases = []
    for standings, digests, own_standing, own in (
        ([64, 3, 3, 3, 0], [d2, d1, d1, d1, d1], 20, d1),     # 16 vs 3 + 3 + 3 + 16, but 1 established voter each: split
        ([64, 64, 0, 5, 5], [d2, d2, d1, d1, d1], 0, d1),     # 32 vs 10 + 1: d2 wins
        ([16, 0, 0, 0, 16], [d2, d1, d1, d1, d1], 0, d1),     # 16 vs 16 + 1, 1 established each: split
        ([10, 0, 0, 0, 9], [d2, d1, d1, d1, d1], 0, d1),      # 10 vs 9 + 1: a split
        ([13], [d2], 64, d1),                                 # our weight alone (16 vs 13) does not win
        ([64, 64, 13, 13], [d2, d2, d1, d1], 64, d2),         # 3 established voters of 5 and 45 of 74: d2 wins
        ([4, 4, 4], [d2, d2, d2], 2, d1),                     # nobody established: 12 vs 2 by weight, d2 wins
    ):
        book = VoteBook()
        stand = {me.machine: own_standing}
        votes = []
        for s, st, dg in zip(signers[1:], standings, digests):
            book.add(Vote.create(s, swarm, 10, dg))
            stand[s.machine] = st
            votes.append({"machine": s.machine.hex(), "standing": st, "digest": dg.hex()})
        t = book.tally(10, lambda m: min(stand.get(m, 0), 16), own, me.machine, established=8)
        cases.append({"votes": votes, "own_standing": own_standing, "own_digest": own.hex(),
                      "me": me.machine.hex(), "winner": t.winner.hex() if t.winner else None, "weight": t.weight,
                      "total": t.total, "supporters": [m.hex() for m in t.supporters], "split": t.split,
                      "leader": t.leader.hex() if t.leader else None,
                      "leader_supporters": [m.hex() for m in t.leader_supporters]})
    return {"cap": 16, "established": 8, "cases": cases}


def update_16bit_vector() -> dict:
    """bfloat16 and float16 weights: rounded back to 16 bits after every term (SPEC 10.5)."""
    from seedswarm.model.perturb import Term, apply_reference
    out = {}
    terms = [(0x0123456789ABCDEF, -3.0e-3, 0.999), (0xFEDCBA9876543210, 1.7e-3, 1.0), (0x1111222233334444, 2.2e-3, 0.9995)]
    for name, dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        theta = torch.tensor([1.0, -0.3, 2.5e-3, 7.0, -0.0, 1e-6, 300.0, -65504.0 if name == "float16" else -3e38],
                             dtype=dtype)
        bits = theta.view(torch.int16).numpy().astype("<i2").tobytes().hex()
        flat = theta.clone()
        apply_reference(flat, [Term(k, c, d) for k, c, d in terms], RADEMACHER, offset=60)
        out[name] = {"theta": bits, "offset": 60, "dist": RADEMACHER,
                     "terms": [{"key": f"{k:016x}", "coef": cf, "decay": d} for k, cf, d in terms],
                     "result": flat.view(torch.int16).numpy().astype("<i2").tobytes().hex()}
    return out


def update_vector() -> dict:
    """theta <- fl32(fl32(theta*decay) + fl32(coef*z)) for two terms, then a perturbed copy."""
    theta = np.array([0.5, -1.25, 3.0e-3, 7.0, -0.0, 1.0e-8, 2.5, -3.75], dtype=np.float32)
    terms = [(0x0123456789ABCDEF, -1.5e-4, 0.9999), (0xFEDCBA9876543210, 2.0e-4, 1.0)]
    out = {"theta": [f_hex(v) for v in theta], "offset": 60, "dist": RADEMACHER,
           "terms": [{"key": f"{k:016x}", "coef": cf, "decay": d, "coef_hex": f_hex(cf), "decay_hex": f_hex(d)}
                     for k, cf, d in terms]}
    v = theta.copy()
    for key, coef, decay in terms:
        z = np.array([z_value(RADEMACHER, key, 60 + i) for i in range(len(v))], dtype=np.float32)
        v = (v * np.float32(decay)).astype(np.float32)
        v = (v + (np.float32(coef) * z).astype(np.float32)).astype(np.float32)
    pkey, pscale = 0x1111222233334444, 1e-3
    zp = np.array([z_value(RADEMACHER, pkey, 60 + i) for i in range(len(v))], dtype=np.float32)
    perturbed = (v + (np.float32(pscale) * zp).astype(np.float32)).astype(np.float32)
    out.update(result=[f_hex(x) for x in v], perturb={"key": f"{pkey:016x}", "scale": pscale},
               perturbed=[f_hex(x) for x in perturbed])
    return out


# --- low-rank perturbations (SPEC 5.1) ----------------------------------------------------------
LOWRANK_KEY = 0x0123456789ABCDEF
LOWRANK_SHAPE = (3, 5)


def lowrank_z_vector() -> dict:
    """z of all 15 elements of a 3 x 5 tensor at every rank, from the element-by-element
    definition; the engine's matrix product must give the same bits."""
    from seedswarm.model.lowrank import z_matrix
    out = {"key": f"{LOWRANK_KEY:016x}", "shape": list(LOWRANK_SHAPE), "ranks": {}}
    for rank in (1, 4, 16, 64):
        z = [lowrank_z_value(LOWRANK_KEY, LOWRANK_SHAPE, rank, i) for i in range(15)]
        assert z_matrix(LOWRANK_KEY, LOWRANK_SHAPE, rank).flatten().tolist() == z
        out["ranks"][str(rank)] = {"z": z, "z_hex": [f_hex(v) for v in z]}
    return out


def lowrank_update_vector() -> dict:
    """Two terms on a 3 x 5 float32 tensor of a rank-4 swarm (SPEC 10.5 with 5.1's z), then a
    perturbed copy; checked against the engine (model/lowrank.py)."""
    from seedswarm.model.lowrank import apply as lowrank_apply
    from seedswarm.model.perturb import Term
    rank = 4
    theta = np.array([0.5, -1.25, 3.0e-3, 7.0, -0.0, 1.0e-8, 2.5, -3.75, 1.0, 0.0, -2.0e-4, 12.0, 0.125, -0.5, 3.0],
                     dtype=np.float32)
    terms = [(0x0123456789ABCDEF, -1.5e-4, 0.9999), (0xFEDCBA9876543210, 2.0e-4, 1.0)]
    v = theta.copy()
    for key, coef, decay in terms:
        z = np.array([lowrank_z_value(key, LOWRANK_SHAPE, rank, i) for i in range(15)], dtype=np.float32)
        v = (v * np.float32(decay)).astype(np.float32)
        v = (v + (np.float32(coef) * z).astype(np.float32)).astype(np.float32)
    pkey, pscale = 0x1111222233334444, 1e-3
    zp = np.array([lowrank_z_value(pkey, LOWRANK_SHAPE, rank, i) for i in range(15)], dtype=np.float32)
    perturbed = (v + (np.float32(pscale) * zp).astype(np.float32)).astype(np.float32)
    engine = torch.from_numpy(theta.copy()).view(LOWRANK_SHAPE)
    copy = torch.empty(15)
    lowrank_apply(engine, [Term(k, c, d) for k, c, d in terms], rank, perturb=(pkey, pscale), out=copy)
    assert engine.flatten().numpy().tobytes() == v.tobytes() and copy.numpy().tobytes() == perturbed.tobytes()
    return {"theta": [f_hex(x) for x in theta], "shape": list(LOWRANK_SHAPE), "rank": rank,
            "terms": [{"key": f"{k:016x}", "coef": cf, "decay": d, "coef_hex": f_hex(cf), "decay_hex": f_hex(d)}
                      for k, cf, d in terms],
            "result": [f_hex(x) for x in v], "perturb": {"key": f"{pkey:016x}", "scale": pscale},
            "perturbed": [f_hex(x) for x in perturbed]}


def lowrank_spec_vector() -> dict:
    """``perturbation_rank`` (optional, 4.1): 4 is carried in the canonical bytes, 0 leaves the id alone."""
    minimal = {"name": "vectors-minimal", "model": {"id": "m"}, "task": {"kind": "label-prompts"}}
    plain = SwarmSpec.from_dict(minimal)
    assert SwarmSpec.from_dict(dict(minimal, perturbation_rank=0)).swarm_id == plain.swarm_id
    spec = SwarmSpec.from_dict(dict(minimal, perturbation_rank=4))
    return {"json": json.dumps(dict(minimal, perturbation_rank=4)), "canonical": spec.canonical_bytes().hex(),
            "swarm_id": spec.swarm_id_hex, "json_zero": json.dumps(dict(minimal, perturbation_rank=0)),
            "swarm_id_zero": plain.swarm_id_hex,
            "rejected_json": [json.dumps(dict(minimal, perturbation_rank=r)) for r in (2, 8, -4, 256)]
            + [json.dumps(dict(minimal, perturbation_rank=4, perturbation="gaussian")),
               json.dumps(dict(minimal, perturbation_rank=4.0))]}


# --- seed pools (SPEC 5.2, 10.4) ------------------------------------------------------------------
def pool_vector(a: Signer, b: Signer) -> dict:
    """Pool indices of samples of two machines at several pool sizes, and pool seeds at edges."""
    from seedswarm.protocol.pool import pool_index, pool_seed
    swarm = SwarmSpec.from_dict({"name": "vectors-minimal", "model": {"id": "m"}, "task": {"kind": "label-prompts"}}).swarm_id
    return {"swarm_id": swarm.hex(),
            "indices": [{"machine": m.machine.hex(), "sample": s, "size": k, "index": pool_index(swarm, m.machine, s, k)}
                        for m in (a, b) for s in (0, 1, 2**40, 2**64 - 1) for k in (1, 7, 64, 65536)],
            "seeds": [{"step": t, "index": k, "seed": f"{pool_seed(swarm, t, k):016x}"}
                      for t in (0, 1, 2**64 - 1) for k in (0, 1, 65535)]}


def pool_spec_vector() -> dict:
    """``seed_pool`` (optional, 4.1): 16 is carried in the canonical bytes, 0 leaves the id alone."""
    minimal = {"name": "vectors-minimal", "model": {"id": "m"}, "task": {"kind": "label-prompts"}}
    plain = SwarmSpec.from_dict(minimal)
    assert SwarmSpec.from_dict(dict(minimal, seed_pool=0)).swarm_id == plain.swarm_id
    spec = SwarmSpec.from_dict(dict(minimal, seed_pool=16))
    return {"json": json.dumps(dict(minimal, seed_pool=16)), "canonical": spec.canonical_bytes().hex(),
            "swarm_id": spec.swarm_id_hex, "json_zero": json.dumps(dict(minimal, seed_pool=0)),
            "swarm_id_zero": plain.swarm_id_hex,
            "rejected_json": [json.dumps(dict(minimal, seed_pool=k)) for k in (-1, 65537, 4.0, True, "4")]}


POOL_TENSOR = ("layer.weight", (2, 4))


def pool_update_vector() -> dict:
    """One step of 6 records x 2 samples, K = 4, weight decay, redescend with an outlier: each
    sample's pool index, g'' and the per-entry sums, the terms, and a 2 x 4 tensor of a rank-1
    swarm after them (checked against the engine, model/lowrank.py)."""
    from seedswarm.model.lowrank import apply as lowrank_apply
    from seedswarm.model.perturb import Term
    from seedswarm.protocol.aggregation import pool_sums
    from seedswarm.protocol.pool import pool_index
    spec = SwarmSpec.from_dict({"name": "vectors-pool", "model": {"id": "m"}, "task": {"kind": "label-prompts"},
                                "samples_per_step": 2, "seed_pool": 4, "perturbation_rank": 1, "weight_decay": 0.5,
                                "lr": {"base": 0.01}, "codec": {"clip": 64.0}})
    signers = [Signer(bytes([i + 1]) * 32) for i in range(6)]
    grads = [bytes([10, 0xF0]), bytes([5, 12]), bytes([0x81, 0x7F]), bytes([0, 0xF9]), bytes([3, 3]), bytes([0xFE, 20])]
    recs = [Record.create(s, spec.swarm_id, 3, 2, g) for s, g in zip(signers, grads)]
    ordered = sorted(recs, key=lambda r: r.machine)
    g2 = step_gradients(spec, ordered)
    sums = pool_sums(spec, ordered, g2)
    terms = step_terms(spec, recs)
    name, shape = POOL_TENSOR
    theta = np.array([0.5, -1.25, 3.0e-3, 7.0, -0.0, 1.0e-8, 2.5, -3.75], dtype=np.float32)
    v = theta.copy()
    for t in terms:  # the tensor decays (no_decay keeps its default, which does not match it)
        key = tensor_key(t.seed, tensor_id(name))
        z = np.array([lowrank_z_value(key, shape, 1, i) for i in range(8)], dtype=np.float32)
        v = (v * np.float32(t.decay)).astype(np.float32)
        v = (v + (np.float32(t.coef) * z).astype(np.float32)).astype(np.float32)
    engine = torch.from_numpy(theta.copy()).view(shape)
    lowrank_apply(engine, [Term(tensor_key(t.seed, tensor_id(name)), t.coef, t.decay) for t in terms], 1)
    assert engine.flatten().numpy().tobytes() == v.tobytes()
    return {"spec_json": json.dumps(spec.to_dict(), sort_keys=True), "swarm_id": spec.swarm_id_hex,
            "records": [r.encode().hex() for r in recs],
            "indices": [pool_index(spec.swarm_id, r.machine, s, 4) for r in ordered for s in r.samples(2)],
            "normalized_hex": [d_hex(x) for gs in g2 for x in gs],
            "sums": [{"index": k, "sum_hex": d_hex(sums[k])} for k in sorted(sums)],
            "terms": [{"seed": f"{t.seed:016x}", "coef_hex": f_hex(t.coef), "decay_hex": f_hex(t.decay)} for t in terms],
            "tensor": {"name": name, "shape": list(shape), "theta": [f_hex(x) for x in theta],
                       "result": [f_hex(x) for x in v]}}


if __name__ == "__main__":
    main()
