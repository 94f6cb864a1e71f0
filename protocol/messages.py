"""Messages between peers, and signed digest votes (SPEC sections 13 and 14.2).

Peers of a swarm talk over *links*: long-lived libp2p streams between overlay neighbours,
each carrying frames of one message, a canonical msgpack array whose first element names
its kind. Every decoder here raises only ProtocolError and returns immutable values.

    ["status", sealed, flags, checkpoint, step_time_ms]     liveness and progress (flags bit 0:
                                     the sender is training)
    ["gossip", [record, ...], [rid, ...], [rid, ...], [[machine, step], ...]]
                                     records pushed whole, ids of records the sender holds
                                     (lazy push), ids it asks for (each list <= MAX_BATCH), and
                                     departures: members whose link closed without a record of
                                     ``step`` (at most MAX_LEFT; a hint that shortens rounds,
                                     never evidence: see SPEC 12)
    ["range",  first, last]          ask for every record of steps first..last-1 the receiver
                                     holds (at most MAX_RANGE steps)
    ["ranged", first, last, more, [record, ...]]   the answer, in one or more frames: the
                                     records of steps first..last-1 (last may be below what was
                                     asked: the sender has sealed no further)
    ["votes",  [vote, ...]]          digest votes
    ["peers",  [machine, ...], [machine, ...]]
                                     peer exchange: the sender's current neighbours, then other
                                     members it knows (so a peer knows who its neighbours are
                                     linked to, and pushes a record only where it is missing)
    ["bye"]                          the sender leaves the swarm

A vote says "after ``step`` sealed steps my weights hash to ``digest``", signed::

    [2, step, digest(32), revision, machine(38), ticket, signature(64)]
    signature over VOTE_DOMAIN || swarm_id || canonical([2, step, digest, revision, machine, ticket])

``revision`` grows each time the voter revises its weights at that step (a heal): of a
machine's votes for one step the highest revision counts.
"""

from __future__ import annotations

from dataclasses import dataclass

from .canonical import pack, unpack_canonical
from .errors import ProtocolError
from .identity import SIGNATURE_BYTES, VOTE_DOMAIN, Signer, check_machine_id, verify_by
from .records import MAX_TICKET_BYTES, RID_BYTES, Record, decode_record

MAX_BATCH = 256          # records, rids, votes or peers per message
MAX_RANGE = 64           # steps per range request
MAX_LEFT = MAX_BATCH     # departures per gossip frame
MAX_MESSAGE_BYTES = 1 << 20
VOTE_VERSION = 2
_U64 = (1 << 64) - 1


# --- votes ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Vote:
    step: int
    digest: bytes
    revision: int
    machine: bytes
    ticket: bytes = b""
    signature: bytes = b"\x00" * SIGNATURE_BYTES

    def __post_init__(self) -> None:
        if type(self.step) is not int or not 0 <= self.step <= _U64:
            raise ProtocolError("vote step must be an unsigned 64-bit integer")
        if type(self.revision) is not int or not 0 <= self.revision <= _U64:
            raise ProtocolError("vote revision must be an unsigned 64-bit integer")
        if type(self.digest) is not bytes or len(self.digest) != 32:
            raise ProtocolError("vote digest must be 32 bytes")
        check_machine_id(self.machine)
        if type(self.ticket) is not bytes or len(self.ticket) > MAX_TICKET_BYTES:
            raise ProtocolError(f"vote ticket must be 0..{MAX_TICKET_BYTES} bytes")
        if type(self.signature) is not bytes or len(self.signature) != SIGNATURE_BYTES:
            raise ProtocolError("vote signature must be 64 bytes")

    @property
    def body(self) -> bytes:
        return pack([VOTE_VERSION, self.step, self.digest, self.revision, self.machine, self.ticket])

    def signed_message(self, swarm_id: bytes) -> bytes:
        return VOTE_DOMAIN + swarm_id + self.body

    def verify(self, swarm_id: bytes) -> "Vote":
        verify_by(self.machine, self.signed_message(swarm_id), self.signature)
        return self

    @classmethod
    def create(cls, signer: Signer, swarm_id: bytes, step: int, digest: bytes, revision: int = 0, ticket: bytes = b"") -> "Vote":
        unsigned = cls(step, digest, revision, signer.machine, ticket)
        return cls(step, digest, revision, signer.machine, ticket, signer.sign(unsigned.signed_message(swarm_id)))

    def encode(self) -> bytes:
        return pack([VOTE_VERSION, self.step, self.digest, self.revision, self.machine, self.ticket, self.signature])


def decode_vote(data: object) -> Vote:
    obj = unpack_canonical(data, 256, "vote")
    if type(obj) is not list or len(obj) != 7:
        raise ProtocolError("vote must be a msgpack array of 7 fields")
    if type(obj[0]) is not int or obj[0] != VOTE_VERSION:
        raise ProtocolError(f"unsupported vote version {obj[0]!r}")
    return Vote(*obj[1:])


# --- link messages ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Status:
    sealed: int        # steps this peer has sealed
    flags: int         # bit 0: it is training (publishing records); other bits 0
    checkpoint: int    # the newest sealed step it can serve a checkpoint of (0: none)
    step_time_ms: int  # its local compute time per step (moving average), milliseconds

    TRAINING = 1

    @property
    def training(self) -> bool:
        return bool(self.flags & self.TRAINING)


@dataclass(frozen=True)
class Gossip:
    records: tuple[Record, ...] = ()   # pushed whole
    have: tuple[bytes, ...] = ()       # ids of records the sender holds
    want: tuple[bytes, ...] = ()       # ids the sender asks for
    left: tuple[tuple[bytes, int], ...] = ()  # (machine, first step it misses): departures


@dataclass(frozen=True)
class RangeRequest:
    first: int
    last: int  # exclusive


@dataclass(frozen=True)
class RangeReply:
    first: int
    last: int
    more: bool  # further frames of this reply follow
    records: tuple[Record, ...]


@dataclass(frozen=True)
class Votes:
    votes: tuple[Vote, ...]


@dataclass(frozen=True)
class Peers:
    neighbours: tuple[bytes, ...]          # the sender's links, all of them (at most MAX_BATCH)
    others: tuple[bytes, ...] = ()         # other members it knows

    @property
    def machines(self) -> tuple[bytes, ...]:
        return self.neighbours + self.others


@dataclass(frozen=True)
class Bye:
    pass


Message = Status | Gossip | RangeRequest | RangeReply | Votes | Peers | Bye


def encode_message(msg: Message) -> bytes:
    if isinstance(msg, Status):
        obj = ["status", msg.sealed, msg.flags, msg.checkpoint, msg.step_time_ms]
    elif isinstance(msg, Gossip):
        obj = ["gossip", [r.encode() for r in msg.records], list(msg.have), list(msg.want),
               [[machine, step] for machine, step in msg.left]]
    elif isinstance(msg, RangeRequest):
        obj = ["range", msg.first, msg.last]
    elif isinstance(msg, RangeReply):
        obj = ["ranged", msg.first, msg.last, msg.more, [r.encode() for r in msg.records]]
    elif isinstance(msg, Votes):
        obj = ["votes", [v.encode() for v in msg.votes]]
    elif isinstance(msg, Peers):
        obj = ["peers", list(msg.neighbours), list(msg.others)]
    elif isinstance(msg, Bye):
        obj = ["bye"]
    else:
        raise TypeError(f"not a message: {msg!r}")
    return pack(obj)


def _bin_size(n: int) -> int:
    return n + (2 if n < 256 else 3 if n < 65536 else 5)


def _array_size(n: int) -> int:
    return 1 if n < 16 else 3 if n < 65536 else 5


def encoded_size(msg: Message) -> int:
    """len(encode_message(msg)), computed without encoding for gossip frames (the bulk of
    traffic; used to count bytes at scale)."""
    if isinstance(msg, Gossip):
        return (1 + 7 + _array_size(len(msg.records)) + sum(_bin_size(len(r.encoded)) for r in msg.records)
                + _array_size(len(msg.have)) + len(msg.have) * _bin_size(16)
                + _array_size(len(msg.want)) + len(msg.want) * _bin_size(16)
                + _array_size(len(msg.left)) + sum(1 + _bin_size(len(m)) + _uint_size(s) for m, s in msg.left))
    return len(encode_message(msg))


def _uint_size(n: int) -> int:
    return 1 if n < 128 else 2 if n < 256 else 3 if n < 65536 else 5 if n < 1 << 32 else 9


def _uint(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value <= _U64:
        raise ProtocolError(f"{what} must be an unsigned 64-bit integer")
    return value


def _items(value: object, what: str) -> list:
    if type(value) is not list or len(value) > MAX_BATCH:
        raise ProtocolError(f"{what} must be a list of at most {MAX_BATCH} items")
    return value


def _rids(value: object, what: str) -> tuple[bytes, ...]:
    items = _items(value, what)
    if not all(type(x) is bytes and len(x) == RID_BYTES for x in items):
        raise ProtocolError(f"{what} must hold {RID_BYTES}-byte record ids")
    return tuple(items)


def _departures(value: object) -> tuple[tuple[bytes, int], ...]:
    if type(value) is not list or len(value) > MAX_LEFT:
        raise ProtocolError(f"departures must be a list of at most {MAX_LEFT} items")
    out = []
    for item in value:
        if type(item) is not list or len(item) != 2:
            raise ProtocolError("a departure is [machine, step]")
        out.append((check_machine_id(item[0]), _uint(item[1], "departure step")))
    if len({m for m, _ in out}) != len(out):
        raise ProtocolError("a frame names a departed machine twice")
    return tuple(out)


_ARITY = {"status": 5, "gossip": 5, "range": 3, "ranged": 5, "votes": 2, "peers": 3, "bye": 1}


def decode_message(data: object) -> Message:
    """One link frame -> a message. ProtocolError for anything malformed (records and votes
    inside are decoded strictly but their signatures are checked by the receiver)."""
    obj = unpack_canonical(data, MAX_MESSAGE_BYTES, "message")
    if type(obj) is not list or not obj or type(obj[0]) is not str or obj[0] not in _ARITY:
        raise ProtocolError("message must be an array starting with a known kind")
    kind = obj[0]
    if len(obj) != _ARITY[kind]:
        raise ProtocolError(f"a {kind!r} message has {_ARITY[kind]} fields")
    if kind == "status":
        sealed, flags, checkpoint, step_time_ms = (_uint(v, f"status field {i}") for i, v in enumerate(obj[1:]))
        if flags & ~Status.TRAINING:
            raise ProtocolError("unknown status flags")
        return Status(sealed, flags, checkpoint, step_time_ms)
    if kind == "gossip":
        return Gossip(tuple(decode_record(r) for r in _items(obj[1], "records")), _rids(obj[2], "have"),
                      _rids(obj[3], "want"), _departures(obj[4]))
    if kind == "range":
        first, last = _uint(obj[1], "range first"), _uint(obj[2], "range last")
        if not first < last <= first + MAX_RANGE:
            raise ProtocolError(f"a range asks for 1..{MAX_RANGE} steps")
        return RangeRequest(first, last)
    if kind == "ranged":
        first, last = _uint(obj[1], "range first"), _uint(obj[2], "range last")
        if not first <= last <= first + MAX_RANGE or type(obj[3]) is not bool:
            raise ProtocolError("malformed range reply")
        records = tuple(decode_record(r) for r in _items(obj[4], "records"))
        if not all(first <= r.step < last for r in records):
            raise ProtocolError("a range reply holds a record outside its range")
        return RangeReply(first, last, obj[3], records)
    if kind == "votes":
        return Votes(tuple(decode_vote(v) for v in _items(obj[1], "votes")))
    if kind == "peers":
        neighbours, others = _items(obj[1], "neighbours"), _items(obj[2], "peers")
        return Peers(tuple(check_machine_id(m) for m in neighbours), tuple(check_machine_id(m) for m in others))
    return Bye()
