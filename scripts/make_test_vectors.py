"""Write tests/vectors/protocol_v1.json: test vectors for re-implementers of the protocol.

Every value comes from the pure-Python protocol package (no torch) except the update
arithmetic, which is spelled out below with numpy float32 so it is readable on its own.
The vectors are committed; tests/test_vectors.py checks the implementation against them,
so a change to the wire format cannot slip in unnoticed. Rerun only for a new protocol
version:  python scripts/make_test_vectors.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from seedswarm.protocol import codec
from seedswarm.protocol.distributions import GAUSSIAN, RADEMACHER, z_value
from seedswarm.protocol.hashing import derive_seed, mix64, stream64, tensor_id, tensor_key
from seedswarm.protocol.records import Record
from seedswarm.protocol.schedule import LRSchedule
from seedswarm.protocol.spec import CodecParams, ModelRef, SwarmSpec, TaskRef

OUT = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "protocol_v1.json"


def f32_hex(x) -> str:
    return np.float32(x).tobytes().hex()


def update_vector() -> dict:
    """theta <- fl32(fl32(theta*decay) + fl32(coef*z)) for two terms, then a perturbed copy."""
    theta = np.array([0.5, -1.25, 3.0e-3, 7.0, -0.0, 1.0e-8, 2.5, -3.75], dtype=np.float32)
    terms = [(0x0123456789ABCDEF, -1.5e-4, 0.9999), (0xFEDCBA9876543210, 2.0e-4, 1.0)]
    out = {"theta": [f32_hex(v) for v in theta], "offset": 60, "dist": RADEMACHER,
           "terms": [{"key": f"{k:016x}", "coef": c, "decay": d} for k, c, d in terms]}
    v = theta.copy()
    for key, coef, decay in terms:
        z = np.array([z_value(RADEMACHER, key, 60 + i) for i in range(len(v))], dtype=np.float32)
        v = (v * np.float32(decay)).astype(np.float32)
        v = (v + (np.float32(coef) * z).astype(np.float32)).astype(np.float32)
    pkey, pscale = 0x1111222233334444, 1e-3
    zp = np.array([z_value(RADEMACHER, pkey, 60 + i) for i in range(len(v))], dtype=np.float32)
    perturbed = (v + (np.float32(pscale) * zp).astype(np.float32)).astype(np.float32)
    out.update(result=[f32_hex(x) for x in v], perturb={"key": f"{pkey:016x}", "scale": pscale},
               perturbed=[f32_hex(x) for x in perturbed])
    return out


def main() -> None:
    swarm_id = bytes(range(32))
    machine = b"\x00\x24\x08\x01\x12\x20" + bytes(range(100, 132))  # a peer-id-like multihash
    spec = SwarmSpec(
        name="vectors", model=ModelRef("sentence-transformers/all-MiniLM-L6-v2", digest="ab" * 32),
        task=TaskRef("label-prompts", {"prompts": ["This is negative.", "This is positive."], "scale": 20.0}),
        lr=LRSchedule(base=1e-4, kind="cosine", warmup_steps=10, total_steps=100, min_ratio=0.1),
        codec=CodecParams(clip=64.0),
    )
    grads = [3.25, -0.4, 0.0, 70.0]
    seeds = [derive_seed(swarm_id, machine, s) for s in range(4)]
    codes, exp = codec.encode(grads, seeds, 64.0)
    record = Record(step=7, machine=machine, first_sample=40, scale_exp=exp, grads=codes)
    vectors = {
        "protocol_version": 1,
        "splitmix64_seed0_first_output": f"{stream64(0, 0):016x}",
        "mix64": {f"{x:016x}": f"{mix64(x):016x}" for x in (0, 1, 0xFFFFFFFFFFFFFFFF, 0x0123456789ABCDEF)},
        "stream64": [{"key": f"{k:016x}", "counter": c, "out": f"{stream64(k, c):016x}"} for k, c in ((7, 0), (7, 1), (1 << 63, 12345))],
        "derive_seed": [{"swarm_id": swarm_id.hex(), "machine": machine.hex(), "sample": s, "seed": f"{derive_seed(swarm_id, machine, s):016x}"} for s in (0, 1, 2**40)],
        "tensor_id": {n: f"{tensor_id(n):016x}" for n in ("embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.bias")},
        "tensor_key": [{"seed": f"{seeds[0]:016x}", "name": "encoder.layer.0.attention.self.query.bias",
                        "key": f"{tensor_key(seeds[0], tensor_id('encoder.layer.0.attention.self.query.bias')):016x}"}],
        "z": {d: {"key": "0123456789abcdef", "first_index": 0,
                  "values": [z_value(d, 0x0123456789ABCDEF, i) for i in list(range(70)) + [4095, 4096, 10**9]]}
              for d in (RADEMACHER, GAUSSIAN)},
        "codec": {"clip": 64.0, "grads": grads, "seeds": [f"{s:016x}" for s in seeds], "scale_exp": exp, "codes": codes.hex(),
                  "decoded": codec.decode(codes, exp, 64.0)},
        "record": {"step": 7, "machine": machine.hex(), "first_sample": 40, "scale_exp": exp, "grads": codes.hex(),
                   "encoded": record.encode().hex()},
        "spec": {"json": spec.to_dict(), "canonical": spec.canonical_bytes().hex(), "swarm_id": spec.swarm_id_hex},
        "lr": {"schedule": {"base": 1e-4, "kind": "cosine", "warmup_steps": 10, "total_steps": 100, "min_ratio": 0.1},
               "values": {str(s): spec.lr(s) for s in (0, 5, 9, 10, 40, 55, 99, 100, 500)}},
        "update": update_vector(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(vectors, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
