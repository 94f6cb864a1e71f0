"""Records: what a peer publishes per step, and their strict msgpack encoding.

Wire form (msgpack array, in this order)::

    [version: int = 1, step: uint, machine: bin(1..64), first_sample: uint,
     scale_exp: uint(0..64), grads: bin(1..MAX_SAMPLES)]

``grads[i]`` is the one-byte code of sample ``first_sample + i`` (see codec.py).
Decoding is all-or-nothing: any deviation from this form raises ProtocolError.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from .codec import MAX_SCALE_EXP, decode
from .errors import ProtocolError

RECORD_VERSION = 1
MAX_MACHINE_ID = 64
MAX_SAMPLES = 1024
MAX_RECORD_BYTES = 2048
_U64 = (1 << 64) - 1


@dataclass(frozen=True)
class Record:
    """One peer's contribution to one step: n one-byte projected gradients."""

    step: int
    machine: bytes
    first_sample: int
    scale_exp: int
    grads: bytes

    def __post_init__(self) -> None:
        _check_record(self)

    @property
    def n(self) -> int:
        return len(self.grads)

    @property
    def samples(self) -> range:
        return range(self.first_sample, self.first_sample + self.n)

    @property
    def order_key(self) -> tuple[int, bytes, int]:
        """Canonical position in the ledger: (step, machine id bytes, first sample)."""
        return (self.step, self.machine, self.first_sample)

    def values(self, clip: float) -> list[float]:
        """Decoded projected gradients, one per sample."""
        return decode(self.grads, self.scale_exp, clip)

    def encode(self) -> bytes:
        return msgpack.packb(
            [RECORD_VERSION, self.step, self.machine, self.first_sample, self.scale_exp, self.grads],
            use_bin_type=True,
        )


def _is_uint(value: object, upper: int = _U64) -> bool:
    return type(value) is int and 0 <= value <= upper


def _check_record(r: Record) -> None:
    if not _is_uint(r.step):
        raise ProtocolError("record step must be an unsigned 64-bit integer")
    if type(r.machine) is not bytes or not 1 <= len(r.machine) <= MAX_MACHINE_ID:
        raise ProtocolError(f"record machine id must be 1..{MAX_MACHINE_ID} bytes")
    if not _is_uint(r.first_sample) or not _is_uint(r.first_sample + max(len(r.grads) - 1, 0)):
        raise ProtocolError("record sample counters must be unsigned 64-bit integers")
    if not _is_uint(r.scale_exp, MAX_SCALE_EXP):
        raise ProtocolError(f"record scale exponent must be in 0..{MAX_SCALE_EXP}")
    if type(r.grads) is not bytes or not 1 <= len(r.grads) <= MAX_SAMPLES:
        raise ProtocolError(f"record must carry 1..{MAX_SAMPLES} gradient bytes")
    if 0x80 in r.grads:
        raise ProtocolError("gradient byte 0x80 is not a valid code")


def decode_record(data: bytes) -> Record:
    """Parse one encoded record, or raise ProtocolError. Never returns a partial record."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"record must be bytes, not {type(data).__name__}")
    if len(data) > MAX_RECORD_BYTES:
        raise ProtocolError(f"record of {len(data)} bytes exceeds {MAX_RECORD_BYTES}")
    try:
        obj = msgpack.unpackb(
            bytes(data), raw=False, strict_map_key=True, use_list=True,
            max_bin_len=MAX_RECORD_BYTES, max_str_len=0, max_array_len=8, max_map_len=0, max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises a zoo of types for bad input
        raise ProtocolError(f"record is not valid msgpack: {exc}") from None
    if type(obj) is not list or len(obj) != 6:
        raise ProtocolError("record must be a msgpack array of 6 fields")
    version, step, machine, first_sample, scale_exp, grads = obj
    if version != RECORD_VERSION or type(version) is not int:
        raise ProtocolError(f"unsupported record version {version!r} (this peer speaks {RECORD_VERSION})")
    return Record(step=step, machine=machine, first_sample=first_sample, scale_exp=scale_exp, grads=grads)
