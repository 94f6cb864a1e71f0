"""Canonical msgpack: one byte string per value, and a strict decoder for untrusted bytes.

Canonical form (SPEC section 3): msgpack as ``msgpack.packb(value,
use_bin_type=True)`` writes it, i.e. every integer and container length in its shortest
encoding, strings as str (UTF-8) and byte strings as bin, floats as float64, and every
map's keys sorted (by their UTF-8 bytes) with no duplicates; no ext types, no nil where a
field is not optional. A decoder re-encodes what it read and rejects any input whose bytes
differ, so equal values always have equal bytes (and equal hashes, and equal signatures).
"""

from __future__ import annotations

from typing import Any

import msgpack

from .errors import ProtocolError

#: Containers deeper than this are refused before they can cost recursion.
MAX_DEPTH = 16


_FLAT = (bytes, str, int, float, bool, type(None))


def _sorted(obj: Any, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise ProtocolError(f"value nests deeper than {MAX_DEPTH} levels")
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise ProtocolError("map keys must be strings")
        return {k: _sorted(obj[k], depth + 1) for k in sorted(obj, key=lambda k: k.encode("utf-8"))}
    if isinstance(obj, (list, tuple)):
        if all(type(v) in _FLAT for v in obj):
            if obj and depth + 1 > MAX_DEPTH:
                raise ProtocolError(f"value nests deeper than {MAX_DEPTH} levels")
            return obj  # nothing inside to sort (lists of records, ids: the common case)
        return [_sorted(v, depth + 1) for v in obj]
    return obj


def pack(obj: Any) -> bytes:
    """The canonical encoding of a JSON-like value (maps sorted, floats as float64)."""
    return msgpack.packb(_sorted(obj), use_bin_type=True, use_single_float=False)


def _depth(obj: Any, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise ProtocolError(f"value nests deeper than {MAX_DEPTH} levels")
    if isinstance(obj, dict):
        for v in obj.values():
            _depth(v, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            _depth(v, depth + 1)


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError("ext types are not part of the canonical encoding")  # max_ext_len=0 lets ext 0 bytes long through


def unpack_canonical(data: object, max_bytes: int, what: str) -> Any:
    """Decode untrusted bytes that must be one canonical msgpack value of at most
    ``max_bytes`` bytes. Raises ProtocolError (only) for anything else."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"{what} must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise ProtocolError(f"{what} of {len(data)} bytes exceeds {max_bytes}")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True, max_ext_len=0,
                              ext_hook=_no_ext)
    except Exception as exc:  # msgpack raises a zoo of types (and StackError) for bad input
        raise ProtocolError(f"{what} is not valid msgpack: {type(exc).__name__}") from None
    _depth(obj)
    try:
        again = pack(obj)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"{what} holds a value msgpack cannot re-encode: {type(exc).__name__}") from None
    if again != data:
        raise ProtocolError(f"{what} is not in canonical form")
    return obj
