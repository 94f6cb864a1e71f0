"""Records: what a peer publishes per step, signed by its author, and their strict encoding.

Wire form (protocol v2), a msgpack array in canonical form (section "Canonical msgpack")::

    [2, step: uint, machine: bin(38), scale_exp: uint(0..64), grads: bin(1..1024),
     ticket: bin(0..64), signature: bin(64)]

- ``grads[j]`` is the one-byte code of the step's sample j (codec.py); sample j of a
  record is named by the sample counter ``step * samples_per_step + j``, so a (machine,
  step) pair names a record and its perturbation seeds, and nothing can reuse them;
- ``ticket`` admits the machine to the swarm (identity.py); empty in open swarms;
- ``signature`` is the author's Ed25519 signature of ``RECORD_DOMAIN || swarm_id || body``
  where ``body`` is the canonical msgpack of the first six fields. The swarm id is signed
  but not sent, so a record is valid in exactly one swarm.

Decoding is all-or-nothing and raises only ProtocolError. Two records are the same record
when their bodies are equal (``rid``); a record's signature is checked once, by
``verify(swarm_id)``, before anything trusts it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property

from .canonical import unpack_canonical, pack
from .codec import MAX_SCALE_EXP, decode
from .errors import ProtocolError
from .identity import MACHINE_ID_BYTES, RECORD_DOMAIN, SIGNATURE_BYTES, Signer, check_machine_id, verify_by

RECORD_VERSION = 2
MAX_SAMPLES = 1024
MAX_TICKET_BYTES = 64
#: An upper bound of any valid encoding (7-field array, the largest fields), checked first.
MAX_RECORD_BYTES = 1 + 1 + 9 + 2 + MACHINE_ID_BYTES + 1 + 3 + MAX_SAMPLES + 2 + MAX_TICKET_BYTES + 2 + SIGNATURE_BYTES
RID_BYTES = 16
_U64 = (1 << 64) - 1


@dataclass(frozen=True)
class Record:
    """One peer's contribution to one step: n one-byte projected gradients, signed."""

    step: int
    machine: bytes
    scale_exp: int
    grads: bytes
    ticket: bytes = b""
    signature: bytes = field(default=b"\x00" * SIGNATURE_BYTES, compare=False)

    def __post_init__(self) -> None:
        _check_record(self)

    # --- identity ---------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return len(self.grads)

    def samples(self, samples_per_step: int) -> range:
        """The sample counters this record's gradients belong to (seeds: hashing.derive_seed)."""
        first = self.step * samples_per_step
        return range(first, first + self.n)

    @property
    def order_key(self) -> tuple[int, bytes]:
        """Canonical position in the ledger: (step, machine id bytes)."""
        return (self.step, self.machine)

    @property
    def slot(self) -> tuple[int, bytes]:
        """(step, machine): a machine publishes at most one record per step."""
        return (self.step, self.machine)

    @cached_property
    def body(self) -> bytes:
        """The canonical msgpack of everything but the signature: what the author signs."""
        return pack([RECORD_VERSION, self.step, self.machine, self.scale_exp, self.grads, self.ticket])

    @cached_property
    def rid(self) -> bytes:
        """Record id: the first 16 bytes of SHA-256(body). Equal bodies are one record."""
        return hashlib.sha256(self.body).digest()[:RID_BYTES]

    def values(self, clip: float) -> list[float]:
        """Decoded projected gradients, one per sample."""
        return decode(self.grads, self.scale_exp, clip)

    # --- signatures -------------------------------------------------------------------------
    def signed_message(self, swarm_id: bytes) -> bytes:
        return RECORD_DOMAIN + swarm_id + self.body

    def verify(self, swarm_id: bytes) -> "Record":
        """This record if its author signed it for ``swarm_id``; ProtocolError otherwise."""
        verify_by(self.machine, self.signed_message(swarm_id), self.signature)
        return self

    @classmethod
    def create(cls, signer: Signer, swarm_id: bytes, step: int, scale_exp: int, grads: bytes, ticket: bytes = b"") -> "Record":
        unsigned = cls(step=step, machine=signer.machine, scale_exp=scale_exp, grads=grads, ticket=ticket)
        return cls(step=step, machine=signer.machine, scale_exp=scale_exp, grads=grads, ticket=ticket,
                   signature=signer.sign(unsigned.signed_message(swarm_id)))

    def encode(self) -> bytes:
        return self.encoded

    @cached_property
    def encoded(self) -> bytes:
        return pack([RECORD_VERSION, self.step, self.machine, self.scale_exp, self.grads, self.ticket, self.signature])


def _is_uint(value: object, upper: int = _U64) -> bool:
    return type(value) is int and 0 <= value <= upper


def _check_record(r: Record) -> None:
    if not _is_uint(r.step):
        raise ProtocolError("record step must be an unsigned 64-bit integer")
    check_machine_id(r.machine)
    if not _is_uint(r.scale_exp, MAX_SCALE_EXP):
        raise ProtocolError(f"record scale exponent must be in 0..{MAX_SCALE_EXP}")
    if type(r.grads) is not bytes or not 1 <= len(r.grads) <= MAX_SAMPLES:
        raise ProtocolError(f"record must carry 1..{MAX_SAMPLES} gradient bytes")
    if 0x80 in r.grads:
        raise ProtocolError("gradient byte 0x80 is not a valid code")
    if type(r.ticket) is not bytes or len(r.ticket) > MAX_TICKET_BYTES:
        raise ProtocolError(f"record ticket must be 0..{MAX_TICKET_BYTES} bytes")
    if type(r.signature) is not bytes or len(r.signature) != SIGNATURE_BYTES:
        raise ProtocolError("record signature must be 64 bytes")


def decode_record(data: object) -> Record:
    """Parse one encoded record (not yet signature-checked: see ``Record.verify``), or raise
    ProtocolError. Never returns a partial record; rejects any non-canonical encoding."""
    obj = unpack_canonical(data, MAX_RECORD_BYTES, "record")
    if type(obj) is not list or len(obj) != 7:
        raise ProtocolError("record must be a msgpack array of 7 fields")
    version, step, machine, scale_exp, grads, ticket, signature = obj
    if type(version) is not int or version != RECORD_VERSION:
        raise ProtocolError(f"unsupported record version {version!r} (this peer speaks {RECORD_VERSION})")
    return Record(step=step, machine=machine, scale_exp=scale_exp, grads=grads, ticket=ticket, signature=signature)
