"""Which records and votes a swarm accepts, as far as their own bytes decide (SPEC section 8).

A record is *admissible* in a swarm when all of these hold; a replica checks them before a
record touches its ledger, and a ledger received from anyone is checked record by record:

1. it decodes strictly (records.py) and its author's signature verifies for this swarm;
2. it carries exactly ``spec.samples_per_step`` gradients, and its sample counters
   (``step * samples_per_step + j``) fit in 64 bits;
3. its ticket admits its machine (identity.check_ticket: open, proof of work, or members).

Where a record sits in time (the step windows, late records per peer) is the swarm core's
rule (peer/core), since it depends on what a replica has sealed; equivocation is the
ledger's (ledger.py), since it depends on which other records exist.
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import ProtocolError
from .hashing import MASK64
from .identity import check_ticket
from .messages import Vote
from .records import Record
from .spec import SwarmSpec


def _ticket(spec: SwarmSpec, machine: bytes, ticket: bytes) -> None:
    a = spec.admission
    check_ticket(a.mode, a.pow_bits, spec.authority_key if a.mode == "members" else b"", spec.swarm_id, machine, ticket)


def check_record(spec: SwarmSpec, record: Record) -> Record:
    """``record`` if it is admissible in the swarm of ``spec``; ProtocolError naming why not."""
    if record.n != spec.samples_per_step:
        raise ProtocolError(f"record carries {record.n} gradients; this swarm takes exactly {spec.samples_per_step}")
    if record.samples(spec.samples_per_step).stop - 1 > MASK64:
        raise ProtocolError(f"record step {record.step} is too large: its sample counters overflow 64 bits")
    _ticket(spec, record.machine, record.ticket)
    return record.verify(spec.swarm_id)


def check_vote(spec: SwarmSpec, vote: Vote) -> Vote:
    _ticket(spec, vote.machine, vote.ticket)
    return vote.verify(spec.swarm_id)


def check_records(spec: SwarmSpec, records: Iterable[Record]) -> list[Record]:
    """Every record admissible, or ProtocolError naming the first that is not."""
    out = []
    for i, record in enumerate(records):
        try:
            out.append(check_record(spec, record))
        except ProtocolError as exc:
            raise ProtocolError(f"record {i} (step {record.step}): {exc}") from None
    return out
