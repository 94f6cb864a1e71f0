"""Valid protocol values shared by the protocol and fuzz tests (torch-free): fixed keys,
specs of each admission mode, and signed records and votes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import msgpack

from seedswarm.protocol import Admission, LRSchedule, ModelRef, Record, Signer, SwarmSpec, TaskRef
from seedswarm.protocol.identity import issue_member_ticket, solve_pow
from seedswarm.protocol.messages import Vote

SIGNERS = [Signer(bytes([i + 1]) * 32) for i in range(4)]
A, B, C, D = SIGNERS
AUTHORITY = Signer(b"\xa0" * 32)
POW_BITS = 6


def make_spec(**overrides) -> SwarmSpec:
    fields = dict(name="s", model=ModelRef("m"), task=TaskRef("label-prompts", {"prompts": ["a", "b"]}),
                  samples_per_step=2)
    fields.update(overrides)
    return SwarmSpec(**fields)


OPEN = make_spec()
POW = make_spec(admission=Admission(pow_bits=POW_BITS))
MEMBERS = make_spec(admission=Admission(mode="members", authority=AUTHORITY.public_key.hex()))
#: A spec touching every field, with JSON-like task options of every kind.
RICH = make_spec(name="rich", model=ModelRef("org/model", "main", "ab" * 32, "bfloat16"),
                 task=TaskRef("label-prompts", {"prompts": ["a", "b"], "n": 3, "w": 0.5, "none": None, "t": True,
                                                "nested": {"k": [1, -2, 2.5]}}),
                 trainable=("*attn*", "*mlp*"), frozen=("*embed*",), perturbation="gaussian", eps=2e-3,
                 lr=LRSchedule(base=1e-3, kind="cosine", warmup_steps=2, total_steps=100, min_ratio=0.1),
                 weight_decay=0.01, samples_per_step=4, batch_size=8, digest_every=5, delay=2, late_window=6,
                 future_window=5)
SPECS = [OPEN, POW, MEMBERS, RICH]


def ticket(spec: SwarmSpec, signer: Signer) -> bytes:
    """The admission ticket ``signer`` needs in the swarm of ``spec``."""
    if spec.admission.mode == "members":
        return issue_member_ticket(AUTHORITY, spec.swarm_id, signer.machine)
    if spec.admission.pow_bits:
        return solve_pow(spec.swarm_id, signer.machine, spec.admission.pow_bits)
    return b""


def record(signer: Signer = A, step: int = 0, grads: bytes = b"\x01\x02", exp: int = 3, spec: SwarmSpec = OPEN,
           with_ticket: bool = True) -> Record:
    return Record.create(signer, spec.swarm_id, step, exp, grads, ticket(spec, signer) if with_ticket else b"")


def vote(signer: Signer = A, step: int = 10, revision: int = 0, spec: SwarmSpec = OPEN, weights: bytes = b"w") -> Vote:
    return Vote.create(signer, spec.swarm_id, step, hashlib.sha256(weights).digest(), revision, ticket(spec, signer))


# --- a msgpack writer that can also write what the canonical encoder refuses ------------------
@dataclass(frozen=True)
class Raw:
    """Bytes spliced into an encoding as they are."""
    data: bytes


@dataclass(frozen=True)
class F32:
    """A float encoded as msgpack float32 (canonical form has float64 only)."""
    value: float


def enc(obj: object) -> bytes:
    """msgpack of ``obj`` in canonical form where it has one (maps with string keys sorted),
    else as written: non-string keys, Raw splices, float32, ext types."""
    if isinstance(obj, Raw):
        return obj.data
    if isinstance(obj, F32):
        return msgpack.packb(obj.value, use_single_float=True)
    if isinstance(obj, list):
        return msgpack.Packer().pack_array_header(len(obj)) + b"".join(enc(v) for v in obj)
    if isinstance(obj, dict):
        items = list(obj.items())
        if all(type(k) is str for k in obj):
            items.sort(key=lambda kv: kv[0].encode("utf-8", "surrogatepass"))
        return msgpack.Packer().pack_map_header(len(items)) + b"".join(enc(k) + enc(v) for k, v in items)
    return msgpack.packb(obj, use_bin_type=True)
