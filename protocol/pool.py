"""Seed pools (``spec.seed_pool = K``, SPEC section 5.2): a step's samples share K directions.

Without a pool every sample of every record has its own direction, so a sealed step of N
records is N perturbation passes over the weights at every replica: with a thousand peers,
sealing costs far more than training. With a pool, step t has K directions, the seeds

    pool_seed(swarm_id, t, k) = blake2b64(POOL_SEED, swarm_id || u64 LE t || u32 LE k)    0 <= k < K

and sample j of machine m's record of step t probes direction ``pool_index(...)``, a hash of
(swarm, machine, sample counter) mod K: fixed by the protocol, so a peer cannot pick its
direction (only its machine id, which admission may make costly). A sealed step then has at
most K update terms whatever N is (``aggregation.step_terms`` sums the gradients of each
direction), the FedKSeed seed pool (Qin et al. 2024) applied per step.

The codec's stochastic rounding (SPEC 6) keeps the sample's own section-5 seed
(``hashing.derive_seed``), so two samples that share a direction still round independently.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from .hashing import MASK64, blake2b64, derive_seed

if TYPE_CHECKING:  # spec.py imports this module for MAX_SEED_POOL
    from .spec import SwarmSpec

POOL_INDEX_DOMAIN = b"seedswarm/pool-index/v2\x00"
POOL_SEED_DOMAIN = b"seedswarm/pool-seed/v2\x00"
#: Largest pool: directions of one step are named by a u32, and more than 65,536 directions
#: per step would cost a replica more than a pool saves.
MAX_SEED_POOL = 65536


def pool_index(swarm_id: bytes, machine_id: bytes, sample: int, size: int) -> int:
    """The pool entry (0..size-1) that sample counter ``sample`` of ``machine_id`` probes.

    Hashed like a section-5 seed, under its own domain::

        blake2b64(POOL_INDEX, swarm_id || u16 BE len(machine_id) || machine_id || u64 LE sample) mod size
    """
    if len(swarm_id) != 32:
        raise ValueError("swarm_id must be 32 bytes")
    if not 0 < len(machine_id) <= 0xFFFF:
        raise ValueError("machine_id must be 1..65535 bytes")
    if not 0 <= sample <= MASK64:
        raise ValueError("sample counter must fit in an unsigned 64-bit integer")
    if not 1 <= size <= MAX_SEED_POOL:
        raise ValueError(f"a seed pool holds 1..{MAX_SEED_POOL} entries")
    payload = swarm_id + struct.pack(">H", len(machine_id)) + machine_id + struct.pack("<Q", sample)
    return blake2b64(POOL_INDEX_DOMAIN, payload) % size


def pool_seed(swarm_id: bytes, step: int, index: int) -> int:
    """The seed of pool entry ``index`` at ``step``: ``blake2b64(POOL_SEED, swarm_id || u64 LE
    step || u32 LE index)``. Tensor keys and z derive from it as from any seed (SPEC 5, 5.1)."""
    if len(swarm_id) != 32:
        raise ValueError("swarm_id must be 32 bytes")
    if not 0 <= step <= MASK64:
        raise ValueError("step must fit in an unsigned 64-bit integer")
    if not 0 <= index < MAX_SEED_POOL:
        raise ValueError(f"pool index must be in 0..{MAX_SEED_POOL - 1}")
    return blake2b64(POOL_SEED_DOMAIN, swarm_id + struct.pack("<QI", step, index))


def direction_seed(spec: "SwarmSpec", machine_id: bytes, sample: int) -> int:
    """The seed whose z sample counter ``sample`` of ``machine_id`` probes: its own section-5 seed
    (``spec.seed_pool = 0``) or its pool entry's seed. What a peer perturbs along to compute the
    sample's projected gradient; replicas apply it along the same z."""
    swarm_id = spec.swarm_id
    if not spec.seed_pool:
        return derive_seed(swarm_id, machine_id, sample)
    step = sample // spec.samples_per_step
    return pool_seed(swarm_id, step, pool_index(swarm_id, machine_id, sample, spec.seed_pool))
