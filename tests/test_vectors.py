"""The implementation against the committed protocol test vectors (tests/vectors/protocol_v1.json)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from seedswarm.model.perturb import Term, apply, apply_reference
from seedswarm.protocol import codec
from seedswarm.protocol.distributions import z_value
from seedswarm.protocol.hashing import derive_seed, mix64, stream64, tensor_id, tensor_key
from seedswarm.protocol.records import Record, decode_record
from seedswarm.protocol.spec import SwarmSpec

V = json.loads((Path(__file__).parent / "vectors" / "protocol_v1.json").read_text())
h = lambda s: int(s, 16)  # noqa: E731


def test_splitmix64_matches_the_published_generator():
    # SplitMix64 seeded with 0 outputs 0xe220a8397b1dcdaf first (Vigna's reference code).
    assert stream64(0, 0) == 0xE220A8397B1DCDAF
    assert V["splitmix64_seed0_first_output"] == "e220a8397b1dcdaf"


def test_hashing_vectors():
    for x, y in V["mix64"].items():
        assert mix64(h(x)) == h(y)
    for row in V["stream64"]:
        assert stream64(h(row["key"]), row["counter"]) == h(row["out"])
    for row in V["derive_seed"]:
        assert derive_seed(bytes.fromhex(row["swarm_id"]), bytes.fromhex(row["machine"]), row["sample"]) == h(row["seed"])
    for name, value in V["tensor_id"].items():
        assert tensor_id(name) == h(value)
    for row in V["tensor_key"]:
        assert tensor_key(h(row["seed"]), tensor_id(row["name"])) == h(row["key"])


@pytest.mark.parametrize("dist", ["rademacher", "gaussian"])
def test_z_vectors(dist):
    row = V["z"][dist]
    indices = list(range(70)) + [4095, 4096, 10**9]
    assert [z_value(dist, h(row["key"]), i) for i in indices] == row["values"]


def test_codec_and_record_vectors():
    c = V["codec"]
    codes, exp = codec.encode(c["grads"], [h(s) for s in c["seeds"]], c["clip"])
    assert (codes.hex(), exp) == (c["codes"], c["scale_exp"])
    assert codec.decode(codes, exp, c["clip"]) == c["decoded"]
    r = V["record"]
    record = Record(step=r["step"], machine=bytes.fromhex(r["machine"]), first_sample=r["first_sample"],
                    scale_exp=r["scale_exp"], grads=bytes.fromhex(r["grads"]))
    assert record.encode().hex() == r["encoded"]
    assert decode_record(bytes.fromhex(r["encoded"])) == record


def test_spec_and_lr_vectors():
    s = V["spec"]
    spec = SwarmSpec.from_dict(s["json"])
    assert spec.canonical_bytes().hex() == s["canonical"]
    assert spec.swarm_id_hex == s["swarm_id"]
    assert SwarmSpec.from_canonical(bytes.fromhex(s["canonical"]), bytes.fromhex(s["swarm_id"])) == spec
    for step, lr in V["lr"]["values"].items():
        assert spec.lr(int(step)) == lr


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
