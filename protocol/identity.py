"""Machine ids, signatures and admission tickets (Ed25519).

A machine id is the libp2p peer id of an Ed25519 key. libp2p inlines keys of at most 42
bytes into the peer id (an "identity" multihash), so the 38 bytes of a machine id are::

    0x00 0x24             identity multihash, 36 bytes follow
    0x08 0x01 0x12 0x20   protobuf PublicKey {Type: Ed25519, Data: 32 bytes}
    public key (32 bytes)

Every signed object therefore verifies from its own bytes: no key server, no certificate,
no extra public key on the wire. Signatures are RFC 8032 Ed25519 (64 bytes) over a
domain-separated message, so a signature made for one purpose (a record, a vote, a DHT
entry) is never valid for another, nor in another swarm.

Admission tickets bind a machine to a swarm (protocol SPEC section 9):

- ``open`` swarms with ``pow_bits = 0``: the empty ticket;
- ``open`` swarms with ``pow_bits = k``: an 8-byte nonce such that
  ``SHA-256(POW_DOMAIN || swarm_id || machine || nonce)`` starts with k zero bits;
- ``members`` swarms: the swarm authority's Ed25519 signature of
  ``MEMBER_DOMAIN || swarm_id || machine``.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import ProtocolError

MACHINE_PREFIX = bytes.fromhex("002408011220")
MACHINE_ID_BYTES = len(MACHINE_PREFIX) + 32
SIGNATURE_BYTES = 64
POW_NONCE_BYTES = 8
MAX_POW_BITS = 32

RECORD_DOMAIN = b"seedswarm/record/v2\x00"
VOTE_DOMAIN = b"seedswarm/vote/v2\x00"
MEMBER_DOMAIN = b"seedswarm/member/v2\x00"
POW_DOMAIN = b"seedswarm/pow/v2\x00"
DHT_DOMAIN = b"seedswarm/dht/v2\x00"


def machine_id(public_key: bytes) -> bytes:
    """The machine id (libp2p peer id bytes) of a raw 32-byte Ed25519 public key."""
    if type(public_key) is not bytes or len(public_key) != 32:
        raise ProtocolError("an Ed25519 public key is 32 bytes")
    return MACHINE_PREFIX + public_key


def check_machine_id(machine: object) -> bytes:
    """``machine`` itself if it is a well-formed Ed25519 machine id, else ProtocolError.

    Its key must be a canonical point encoding of an Ed25519 curve point that is not of
    small order: the keys every Ed25519 library agrees to verify with (OpenSSL accepts a few
    more, libsodium does not), so no signature can be valid at some replicas only."""
    if type(machine) is not bytes or len(machine) != MACHINE_ID_BYTES or not machine.startswith(MACHINE_PREFIX):
        raise ProtocolError(f"machine id must be the {MACHINE_ID_BYTES}-byte libp2p peer id of an Ed25519 key")
    if not _good_key(machine[len(MACHINE_PREFIX):]):
        raise ProtocolError("machine id's key is not a canonical Ed25519 point of large order")
    return machine


# --- Ed25519 points (only to refuse edge-case encodings; signing and the verification equation are
# OpenSSL's, through pyca/cryptography) ------------------------------------------------------------
_P = 2 ** 255 - 19
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)
#: The canonical encodings of the eight points of order 1, 2, 4 and 8 (libsodium's blocklist,
#: both signs of x where x != 0). tests/test_protocol.py derives them from the curve.
SMALL_ORDER = frozenset(bytes.fromhex(h) for h in (
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
))


def decode_point(enc: bytes) -> tuple[int, int] | None:
    """RFC 8032 5.1.3 point decoding, strict: None for y >= p, no such point, or x = 0 with the
    sign bit set."""
    value = int.from_bytes(enc, "little")
    y, sign = value & ((1 << 255) - 1), value >> 255
    if y >= _P:
        return None
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    x = u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P) % _P
    if v * x * x % _P == (-u) % _P:
        x = x * _SQRT_M1 % _P
    elif v * x * x % _P != u:
        return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = _P - x
    return x, y


def _canonical_large(enc: bytes) -> bool:
    """y < p and not one of the eight small-order points (for a signature's R: cheap)."""
    return int.from_bytes(enc, "little") & ((1 << 255) - 1) < _P and enc not in SMALL_ORDER


@lru_cache(maxsize=8192)
def _good_key(enc: bytes) -> bool:
    """A public key every Ed25519 library verifies with: a canonical point of large order."""
    return _canonical_large(enc) and decode_point(enc) is not None


def public_key(machine: bytes) -> bytes:
    return check_machine_id(machine)[len(MACHINE_PREFIX):]


@lru_cache(maxsize=4096)
def _verifier(key: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(key)


def verify(key: bytes, message: bytes, signature: object) -> None:
    """Check an Ed25519 signature by raw public key ``key``; ProtocolError if it does not verify."""
    if type(signature) is not bytes or len(signature) != SIGNATURE_BYTES:
        raise ProtocolError("a signature is 64 bytes")
    if not _canonical_large(signature[:32]):  # OpenSSL would accept a small-order R; libsodium would not
        raise ProtocolError("bad signature")
    try:
        _verifier(key).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise ProtocolError("bad signature") from None


def verify_by(machine: bytes, message: bytes, signature: object) -> None:
    """Check that ``machine`` signed ``message``."""
    verify(public_key(machine), message, signature)


class Signer:
    """An Ed25519 private key that signs on behalf of one machine id."""

    def __init__(self, seed: bytes) -> None:
        if type(seed) is not bytes or len(seed) != 32:
            raise ValueError("an Ed25519 private key seed is 32 bytes")
        # (a key derived from a seed by RFC 8032 is a clamped multiple of the base point: never
        # of small order, always canonically encoded)
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.seed = seed
        self.public_key = self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.machine = machine_id(self.public_key)

    @classmethod
    def generate(cls) -> "Signer":
        return cls(os.urandom(32))

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def __reduce__(self):  # picklable (hivemind may hand validators to its DHT process)
        return (Signer, (self.seed,))

    def __repr__(self) -> str:  # never print the key
        return f"Signer(machine={self.machine.hex()})"


# --- admission tickets -------------------------------------------------------------------------
def pow_digest(swarm_id: bytes, machine: bytes, nonce: bytes) -> bytes:
    return hashlib.sha256(POW_DOMAIN + swarm_id + machine + nonce).digest()


def leading_zero_bits(digest: bytes) -> int:
    value = int.from_bytes(digest, "big")
    return len(digest) * 8 - value.bit_length()


def solve_pow(swarm_id: bytes, machine: bytes, bits: int, start: int = 0) -> bytes:
    """The first 8-byte nonce (big-endian counter from ``start``) meeting ``bits`` zero bits.
    Expected work: 2**bits hashes (bits=20: about a second of one core)."""
    if not 0 <= bits <= MAX_POW_BITS:
        raise ValueError(f"pow_bits must be in 0..{MAX_POW_BITS}")
    prefix = hashlib.sha256(POW_DOMAIN + swarm_id + machine)
    counter = start
    while True:
        nonce = counter.to_bytes(POW_NONCE_BYTES, "big")
        h = prefix.copy()
        h.update(nonce)
        if leading_zero_bits(h.digest()) >= bits:
            return nonce
        counter += 1


def member_message(swarm_id: bytes, machine: bytes) -> bytes:
    return MEMBER_DOMAIN + swarm_id + machine


def issue_member_ticket(authority: Signer, swarm_id: bytes, machine: bytes) -> bytes:
    """What a members-only swarm's creator hands a member: a signature of its machine id."""
    return authority.sign(member_message(swarm_id, check_machine_id(machine)))


@lru_cache(maxsize=4096)
def check_ticket(mode: str, pow_bits: int, authority: bytes, swarm_id: bytes, machine: bytes, ticket: bytes) -> None:
    """ProtocolError unless ``ticket`` admits ``machine`` to the swarm (cached: tickets are
    per machine, and every record of a machine carries the same one)."""
    if mode == "members":
        verify(authority, member_message(swarm_id, machine), ticket)
    elif pow_bits == 0:
        if ticket != b"":
            raise ProtocolError("this swarm takes no admission ticket")
    else:
        if len(ticket) != POW_NONCE_BYTES:
            raise ProtocolError("a proof-of-work ticket is an 8-byte nonce")
        if leading_zero_bits(pow_digest(swarm_id, machine, ticket)) < pow_bits:
            raise ProtocolError(f"proof of work below the swarm's {pow_bits} bits")
