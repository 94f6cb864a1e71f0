"""What peers put in the DHT: rendezvous, member status and the swarm directory (SPEC section 14.4).

The DHT is for finding each other, never for training traffic, and no value in it grows with
the swarm: records travel over links (messages.py). Every value is the canonical msgpack

    ["ss2", kind, swarm_id (32 bytes), payload]

stored under a subkey only its owner can write (the DHT adapter signs it with the owner's
Ed25519 key, peer/dht.py):

    seedswarm/2/<swarm hex>/spec           kind "spec":   the canonical spec bytes, by at most
                                           SPEC_COPIES peers (see ``few_enough``)
    seedswarm/2/<swarm hex>/members/<b>    kind "member": a MemberInfo map; b = the first byte of
                                           SHA-256(machine id) mod MEMBER_BUCKETS, and a peer
                                           registers only while its bucket holds fewer than
                                           BUCKET_CAP live entries
    seedswarm/2/swarms                     kind "swarm":  an Announcement map, by at most
                                           ANNOUNCERS peers per swarm

Decoders raise only ProtocolError.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field, fields

from .canonical import pack, unpack_canonical
from .errors import ProtocolError
from .identity import check_machine_id
from .spec import MAX_SPEC_BYTES, SwarmSpec

MAGIC = "ss2"
MAX_ENTRY_BYTES = MAX_SPEC_BYTES + 256
MEMBER_BUCKETS = 64
BUCKET_CAP = 16
SPEC_COPIES = 4           # peers that keep the spec entry of a swarm alive ...
ANNOUNCERS = 3            # ... and that announce the swarm in the directory
STATUSES = ("starting", "waiting", "syncing", "training", "finishing", "done", "leaving", "isolated")
REACH = ("unknown", "public", "relayed", "private")
MAX_MEMBER_ADDRS = 4      # member.addrs: at most this many multiaddrs ...
MAX_ADDR_CHARS = 200      # ... of at most this many characters each
_U64 = (1 << 64) - 1


def spec_key(swarm: bytes) -> str:
    return f"seedswarm/2/{swarm.hex()}/spec"


def member_key(swarm: bytes, bucket: int) -> str:
    return f"seedswarm/2/{swarm.hex()}/members/{bucket}"


def member_bucket(machine: bytes) -> int:
    return hashlib.sha256(machine).digest()[0] % MEMBER_BUCKETS


def few_enough(me: bytes, others, cap: int) -> bool:
    """Whether ``me`` may (re)write its entry under a key every member could write (the spec,
    the directory) where ``others`` hold entries already (``me`` among them when it holds one):
    a peer without an entry writes only while fewer than ``cap`` others hold one; a peer with
    one keeps refreshing it while it is among the ``cap`` smallest machine ids of the holders
    (so that peers that raced past the cap settle on the smallest, and the rest expire). Every
    peer would otherwise write its own copy, and the value would grow with the swarm: 743-byte
    spec entries reach hivemind's value limit at about 60 peers. (Letting a smaller id take a
    place from a larger one would make every peer smaller than the cap-th write once: about
    cap * (1 + ln(N / cap)) copies alive at once as N peers arrive within an entry's life.)"""
    others = set(others)
    holding = me in others
    others = sorted(others - {me})
    return len(others) < cap or (holding and me < others[cap - 1])


DIRECTORY_KEY = "seedswarm/2/swarms"


@dataclass(frozen=True)
class MemberInfo:
    """A peer's public status: how `seedswarm status`, the monitor and newcomers see it."""

    step: int = 0
    status: str = "starting"
    name: str = ""
    loss: float | None = None
    step_time_ms: int = 0
    checkpoint: int = 0
    sent: int = 0            # wire bytes so far
    received: int = 0
    heals: int = 0
    late: int = 0            # late records it applied
    rejected: int = 0        # inputs this peer refused
    suspects: dict = field(default_factory=dict)  # machine hex -> records refused of that author (top 8)
    reach: str = "unknown"   # public, relayed (through a relay), private (cannot be dialed)
    relay: str = ""          # the relay's peer id, when relayed
    peers: int = 0           # its neighbours
    digest: str = ""         # its weight digest (hex) after digest_step sealed steps ("" / 0: none yet)
    digest_step: int = 0
    addrs: tuple[str, ...] = ()  # multiaddrs others may dial it at (circuit addresses through its relays first)

    def to_obj(self) -> dict:
        obj = asdict(self)
        obj["addrs"] = list(self.addrs)
        return obj


@dataclass(frozen=True)
class Announcement:
    name: str
    model: str
    task: str
    step: int
    peers: int

    def to_obj(self) -> dict:
        return asdict(self)


def _uint(v: object, what: str) -> int:
    if type(v) is not int or not 0 <= v <= _U64:
        raise ProtocolError(f"{what} must be an unsigned 64-bit integer")
    return v


def _text(v: object, what: str, limit: int) -> str:
    if type(v) is not str or len(v) > limit or not v.isascii() and not _utf8(v):
        raise ProtocolError(f"{what} must be a (UTF-8) string of at most {limit} characters")
    return v


def _utf8(v: str) -> bool:
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no canonical encoding
        return False
    return True


def _exact_fields(kind, obj: object, what: str) -> dict:
    names = {f.name for f in fields(kind)}
    if type(obj) is not dict or set(obj) != names:
        raise ProtocolError(f"{what} must be a map of exactly the fields {sorted(names)}")
    return obj


def decode_member(obj: object) -> MemberInfo:
    d = _exact_fields(MemberInfo, obj, "member entry")
    for k in ("step", "step_time_ms", "checkpoint", "sent", "received", "heals", "late", "rejected", "peers",
              "digest_step"):
        _uint(d[k], f"member.{k}")
    if type(d["digest"]) is not str or len(d["digest"]) not in (0, 64) or d["digest"].strip("0123456789abcdef"):
        raise ProtocolError("member.digest must be empty or 64 lowercase hex characters")
    if d["status"] not in STATUSES or d["reach"] not in REACH:
        raise ProtocolError("member status or reach is not a known value")
    _text(d["name"], "member.name", 64)
    _text(d["relay"], "member.relay", 128)
    addrs = d["addrs"]
    if type(addrs) is not list or len(addrs) > MAX_MEMBER_ADDRS or any(
            type(a) is not str or not a.startswith("/") or len(a) > MAX_ADDR_CHARS or not a.isascii() for a in addrs):
        raise ProtocolError(f"member.addrs must be a list of at most {MAX_MEMBER_ADDRS} ASCII strings starting with "
                            f"'/' of at most {MAX_ADDR_CHARS} characters")
    d = {**d, "addrs": tuple(addrs)}
    loss = d["loss"]
    if loss is not None and (type(loss) is not float or not math.isfinite(loss)):
        raise ProtocolError("member.loss must be a finite float or nil")
    sus = d["suspects"]
    if type(sus) is not dict or len(sus) > 8:
        raise ProtocolError("member.suspects must be a map of at most 8 entries")
    for k, v in sus.items():
        if type(k) is not str or len(k) != 76 or any(c not in "0123456789abcdef" for c in k):
            raise ProtocolError("member.suspects keys are machine ids in lowercase hex")
        _uint(v, "member.suspects value")
    return MemberInfo(**d)


def decode_announcement(obj: object) -> Announcement:
    d = _exact_fields(Announcement, obj, "announcement")
    for k in ("name", "model", "task"):
        _text(d[k], f"announcement.{k}", 200)
    _uint(d["step"], "announcement.step")
    _uint(d["peers"], "announcement.peers")
    return Announcement(**d)


@dataclass(frozen=True)
class Entry:
    kind: str
    swarm: bytes
    value: object  # SwarmSpec | MemberInfo | Announcement


def encode_entry(kind: str, swarm: bytes, value) -> bytes:
    if kind == "spec":
        payload = value.canonical_bytes()
    else:
        payload = value.to_obj()
    return pack([MAGIC, kind, swarm, payload])


def decode_entry(data: object) -> Entry:
    """A seedswarm DHT value (found under one of our owner-marked subkeys), or ProtocolError."""
    obj = unpack_canonical(data, MAX_ENTRY_BYTES, "DHT value")
    if type(obj) is not list or not obj or obj[0] != MAGIC:
        raise ProtocolError("not a seedswarm DHT value")
    if len(obj) != 4 or type(obj[1]) is not str:
        raise ProtocolError("a seedswarm DHT value is [\"ss2\", kind, swarm id, payload]")
    kind, swarm, payload = obj[1], obj[2], obj[3]
    if type(swarm) is not bytes or len(swarm) != 32:
        raise ProtocolError("swarm id must be 32 bytes")
    if kind == "spec":
        return Entry(kind, swarm, SwarmSpec.from_canonical(payload, swarm))
    if kind == "member":
        return Entry(kind, swarm, decode_member(payload))
    if kind == "swarm":
        return Entry(kind, swarm, decode_announcement(payload))
    raise ProtocolError(f"unknown seedswarm DHT value kind {kind!r}")


def entry_key(entry: Entry, machine: bytes) -> str:
    """The only key an entry may be stored under (a value names its key)."""
    check_machine_id(machine)
    if entry.kind == "spec":
        return spec_key(entry.swarm)
    if entry.kind == "member":
        return member_key(entry.swarm, member_bucket(machine))
    return DIRECTORY_KEY
