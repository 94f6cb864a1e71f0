"""What seedswarm stores in the hivemind DHT: keys, value encodings and their validator.

Keys (strings, hashed by hivemind)::

    seedswarm/1/<swarm>/spec         one entry per peer: the canonical swarm spec
    seedswarm/1/<swarm>/peers        one entry per peer: its heartbeat (expires in seconds)
    seedswarm/1/<swarm>/step/<t>     one entry per peer: its record for step t
    seedswarm/1/<swarm>/digest/<t>   one entry per peer: its weight digest after step t
    seedswarm/1/swarms               one entry per peer: an announcement of its swarm

Every entry sits under a subkey holding its owner's RSA public key, so hivemind's
``RSASignatureValidator`` lets only that owner write it. Every value is a msgpack array
``["ss1", kind, swarm_id, ...]`` that names the key it belongs to; ``SwarmValidator``
re-derives that key and rejects a value stored anywhere else, a value that fails strict
decoding, a record whose machine id is not its signer's peer id, and anything over
``MAX_VALUE_BYTES`` (hivemind's DHT process dies on values over ~48 KiB). Values of other
applications sharing the DHT are left alone.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import msgpack
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord, RecordValidatorBase

from ..protocol.errors import ProtocolError
from ..protocol.records import Record, decode_record
from ..protocol.spec import MAX_SPEC_BYTES, SwarmSpec
from .identity import peer_id_of_public_key

MAGIC = "ss1"
MAX_VALUE_BYTES = 40 * 1024
DIRECTORY_KEY = "seedswarm/1/swarms"
_OWNER = re.compile(re.escape(b"[owner:") + rb"(.+?)" + re.escape(b"]"))


def spec_key(swarm: bytes) -> str:
    return f"seedswarm/1/{swarm.hex()}/spec"


def peers_key(swarm: bytes) -> str:
    return f"seedswarm/1/{swarm.hex()}/peers"


def step_key(swarm: bytes, step: int) -> str:
    return f"seedswarm/1/{swarm.hex()}/step/{step}"


def digest_key(swarm: bytes, step: int) -> str:
    return f"seedswarm/1/{swarm.hex()}/digest/{step}"


@dataclass
class Heartbeat:
    """A peer's liveness and progress, refreshed every second or so."""

    step: int                 # the step it is working on
    status: str               # "training", "syncing", "done" or "leaving"
    name: str = ""
    loss: float | None = None
    step_time: float = 0.0    # seconds of local compute per step (moving average)
    checkpoint_step: int = -1  # latest checkpoint it can serve
    sent: int = 0             # wire bytes so far (TCP payload of its p2pd)
    received: int = 0
    heals: int = 0
    late: int = 0
    digest: str = ""          # its latest weight digest (hex) ...
    digest_step: int = -1     # ... after this many steps

    STATUSES = ("training", "syncing", "done", "leaving")

    def to_obj(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_obj(cls, obj) -> "Heartbeat":
        if not isinstance(obj, dict) or set(obj) - set(cls.__dataclass_fields__):
            raise ProtocolError("heartbeat must be a map of known fields")
        hb = cls(**obj)
        ints = ("step", "checkpoint_step", "sent", "received", "heals", "late", "digest_step")
        if not all(type(getattr(hb, k)) is int and getattr(hb, k) >= (-1 if k.endswith("_step") and k != "step" else 0) for k in ints):
            raise ProtocolError("heartbeat counters must be non-negative integers")
        if hb.status not in cls.STATUSES or not isinstance(hb.name, str) or len(hb.name) > 64:
            raise ProtocolError("heartbeat status or name invalid")
        if not isinstance(hb.digest, str) or len(hb.digest) not in (0, 64):
            raise ProtocolError("heartbeat digest invalid")
        if hb.loss is not None and not (isinstance(hb.loss, float) and math.isfinite(hb.loss)):
            raise ProtocolError("heartbeat loss must be a finite float or nil")
        if not (isinstance(hb.step_time, float) and 0 <= hb.step_time < 1e6):
            raise ProtocolError("heartbeat step_time invalid")
        return hb


@dataclass
class Announcement:
    """A peer's advertisement of its swarm in the public directory."""

    name: str
    model: str
    task: str
    step: int
    peers: int = 1
    extra: dict = field(default_factory=dict)

    def to_obj(self) -> dict:
        return {"name": self.name, "model": self.model, "task": self.task, "step": self.step, "peers": self.peers}

    @classmethod
    def from_obj(cls, obj) -> "Announcement":
        if not isinstance(obj, dict) or set(obj) != {"name", "model", "task", "step", "peers"}:
            raise ProtocolError("announcement must be a map of name, model, task, step, peers")
        a = cls(**obj)
        if not all(isinstance(getattr(a, k), str) and len(getattr(a, k)) <= 200 for k in ("name", "model", "task")):
            raise ProtocolError("announcement strings invalid")
        if type(a.step) is not int or a.step < 0 or type(a.peers) is not int or a.peers < 0:
            raise ProtocolError("announcement counters invalid")
        return a


# --- encoding -----------------------------------------------------------------------------------
def pack(kind: str, swarm: bytes, *payload) -> bytes:
    return msgpack.packb([MAGIC, kind, swarm, *payload], use_bin_type=True)


def encode_record(swarm: bytes, record: Record) -> bytes:
    return pack("rec", swarm, record.encode())


def encode_heartbeat(swarm: bytes, hb: Heartbeat) -> bytes:
    return pack("hb", swarm, hb.to_obj())


def encode_digest(swarm: bytes, step: int, digest: str) -> bytes:
    return pack("dig", swarm, step, bytes.fromhex(digest))


def encode_spec(spec: SwarmSpec) -> bytes:
    return pack("spec", spec.swarm_id, spec.canonical_bytes())


def encode_announcement(swarm: bytes, ann: Announcement) -> bytes:
    return pack("ann", swarm, ann.to_obj())


@dataclass
class Decoded:
    kind: str
    swarm: bytes
    key: str        # the DHT key this value belongs to
    value: object   # Record | Heartbeat | (step, digest hex) | SwarmSpec | Announcement


def decode_value(data: bytes) -> Decoded | None:
    """A seedswarm DHT value, or None if it is not one of ours. ProtocolError if ours but bad."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_VALUE_BYTES:
        raise ProtocolError("DHT value too large")
    try:
        obj = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True)
    except Exception:
        return None
    if not (isinstance(obj, list) and len(obj) >= 3 and obj[0] == MAGIC):
        return None
    kind, swarm, payload = obj[1], obj[2], obj[3:]
    if type(swarm) is not bytes or len(swarm) != 32:
        raise ProtocolError("swarm id must be 32 bytes")
    if kind == "rec" and len(payload) == 1:
        record = decode_record(payload[0])
        return Decoded(kind, swarm, step_key(swarm, record.step), record)
    if kind == "hb" and len(payload) == 1:
        return Decoded(kind, swarm, peers_key(swarm), Heartbeat.from_obj(payload[0]))
    if kind == "dig" and len(payload) == 2 and type(payload[0]) is int and payload[0] >= 0:
        if type(payload[1]) is not bytes or len(payload[1]) != 32:
            raise ProtocolError("digest must be 32 bytes")
        return Decoded(kind, swarm, digest_key(swarm, payload[0]), (payload[0], payload[1].hex()))
    if kind == "spec" and len(payload) == 1:
        if type(payload[0]) is not bytes or len(payload[0]) > MAX_SPEC_BYTES:
            raise ProtocolError("spec must be bytes")
        return Decoded(kind, swarm, spec_key(swarm), SwarmSpec.from_canonical(payload[0], swarm))
    if kind == "ann" and len(payload) == 1:
        return Decoded(kind, swarm, DIRECTORY_KEY, Announcement.from_obj(payload[0]))
    raise ProtocolError(f"unknown or malformed seedswarm value of kind {kind!r}")


def owner_peer_id(subkey) -> bytes | None:
    """The peer id of the owner named in a protected subkey, or None if the subkey is unprotected."""
    if not isinstance(subkey, (bytes, bytearray)):
        return None
    found = _OWNER.findall(bytes(subkey))
    if len(found) != 1:
        return None
    try:
        return peer_id_of_public_key(found[0])
    except Exception:
        return None


def decode_entry(key: str, subkey, value: bytes) -> tuple[bytes, Decoded] | None:
    """Check one DHT entry read under ``key`` on the reading side: (owner peer id, value) or None.

    The DHT's validators already ran, but a reader may talk to nodes that run none
    (a stock bootstrap), so everything is checked again here."""
    owner = owner_peer_id(subkey)
    if owner is None:
        return None
    try:
        decoded = decode_value(value)
    except ProtocolError:
        return None
    if decoded is None or decoded.key != key:
        return None
    if decoded.kind == "rec" and decoded.value.machine != owner:
        return None
    return owner, decoded


def decode_entries(key: str, found) -> list[tuple[bytes, Decoded] | None]:
    """Every entry of a hivemind get result for ``key`` through ``decode_entry`` (None where
    invalid); no entries if nothing, or no dictionary, was found."""
    if found is None or not isinstance(found.value, dict):
        return []
    return [decode_entry(key, subkey, item.value) for subkey, item in found.value.items()]


class SwarmValidator(RecordValidatorBase):
    """Rejects malformed seedswarm values, values stored under a key they do not name, unsigned
    seedswarm values, and records whose machine id is not their signer's. Runs after hivemind's
    RSASignatureValidator, which checks the signature itself."""

    def __init__(self) -> None:
        self._key_ids: dict[str, bytes] = {}

    def _key_id(self, key: str) -> bytes:
        if key not in self._key_ids:
            if len(self._key_ids) > 100_000:
                self._key_ids.clear()
            self._key_ids[key] = DHTID.generate(source=key).to_bytes()
        return self._key_ids[key]

    def validate(self, record: DHTRecord) -> bool:
        try:
            decoded = decode_value(record.value)
        except ProtocolError:
            return False
        if decoded is None:
            return True  # another application's value
        if self._key_id(decoded.key) != record.key:
            return False
        owner = owner_peer_id(record.subkey)
        if owner is None:
            return False
        return decoded.kind != "rec" or decoded.value.machine == owner

    @property
    def priority(self) -> int:
        return 0  # after the signature validator (priority 10) has stripped the signature

    def merge_with(self, other: RecordValidatorBase) -> bool:
        return isinstance(other, SwarmValidator)


def validators(identity) -> list[RecordValidatorBase]:
    """The record validators every seedswarm DHT node runs."""
    return [RSASignatureValidator(identity.private_key), SwarmValidator()]
