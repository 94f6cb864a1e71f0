"""Seeds and counter-based random bits, defined on unsigned 64-bit integers.

Everything here is plain integer arithmetic modulo 2**64 plus BLAKE2b, so any
language (and any device: CPU, CUDA, Triton) reproduces it bit for bit. torch's
own generators are deliberately not used: their output differs between CPU and
CUDA, between GPU models, and with tensor size (see DESIGN.md).

- ``mix64`` is the SplitMix64 output function (Steele, Lea & Flood 2014).
- ``stream64(key, n)`` is the n-th output of SplitMix64 started from ``key``.
- ``derive_seed`` names a perturbation: (swarm id, machine id, sample counter).
- ``tensor_key`` turns a perturbation seed and a parameter name into the key of
  that tensor's stream, so z never depends on the order tensors are visited in.
"""

from __future__ import annotations

import hashlib
import struct

MASK64 = (1 << 64) - 1
GOLDEN_GAMMA = 0x9E3779B97F4A7C15
_MIX_C1 = 0xBF58476D1CE4E5B9
_MIX_C2 = 0x94D049BB133111EB

SEED_DOMAIN = b"seedswarm/seed/v1\x00"
TENSOR_DOMAIN = b"seedswarm/tensor/v1\x00"
CODEC_DOMAIN = b"seedswarm/codec/v1\x00"


def mix64(z: int) -> int:
    """SplitMix64's finaliser: a bijection on 64-bit integers with full avalanche."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * _MIX_C1) & MASK64
    z = ((z ^ (z >> 27)) * _MIX_C2) & MASK64
    return z ^ (z >> 31)


def stream64(key: int, counter: int) -> int:
    """The ``counter``-th (0-based) output of SplitMix64 seeded with ``key``."""
    return mix64((key + (counter + 1) * GOLDEN_GAMMA) & MASK64)


def blake2b64(domain: bytes, payload: bytes) -> int:
    """BLAKE2b with an 8-byte digest (RFC 7693, no key) of domain||payload, read little-endian."""
    return int.from_bytes(hashlib.blake2b(domain + payload, digest_size=8).digest(), "little")


def derive_seed(swarm_id: bytes, machine_id: bytes, sample: int) -> int:
    """The 64-bit seed of one perturbation sample.

    Byte layout hashed (after ``SEED_DOMAIN``)::

        swarm_id (32 bytes) || u16 big-endian len(machine_id) || machine_id || u64 little-endian sample
    """
    if len(swarm_id) != 32:
        raise ValueError("swarm_id must be 32 bytes")
    if not 0 < len(machine_id) <= 0xFFFF:
        raise ValueError("machine_id must be 1..65535 bytes")
    if not 0 <= sample <= MASK64:
        raise ValueError("sample counter must fit in an unsigned 64-bit integer")
    payload = swarm_id + struct.pack(">H", len(machine_id)) + machine_id + struct.pack("<Q", sample)
    return blake2b64(SEED_DOMAIN, payload)


def tensor_id(name: str) -> int:
    """A stable 64-bit id of a parameter, from its name (``model.named_parameters()`` spelling)."""
    return blake2b64(TENSOR_DOMAIN, name.encode("utf-8"))


def tensor_key(seed: int, name_id: int) -> int:
    """Key of the random stream that perturbs tensor ``name_id`` for perturbation ``seed``."""
    return mix64(seed ^ name_id)


_CODEC_SALT = blake2b64(CODEC_DOMAIN, b"")


def codec_uniform(seed: int) -> float:
    """The uniform in [0, 1) that stochastically rounds the gradient of sample ``seed``.

    53 bits of ``mix64(seed ^ salt)``, so a peer that re-encodes the same gradient
    (after a crash, or to audit) gets the same byte.
    """
    return (mix64(seed ^ _CODEC_SALT) >> 11) * (2.0**-53)
