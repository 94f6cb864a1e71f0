"""What the swarm core is told (events) and what it asks for (actions).

The core is a pure state machine (see core.py): a driver feeds it events stamped with the
current time and carries out the actions it returns. The real driver is peer/node.py
(libp2p links, a DHT, a tensor worker); the simulator (peer/sim.py) is another. Neither
the core nor these types import asyncio, hivemind or torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...protocol.messages import Message
from ...protocol.records import Record


# --- events ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tick:
    """Time passed (the driver sends one at least every ``CoreConfig.tick`` seconds)."""


@dataclass(frozen=True)
class LinkUp:
    peer: bytes


@dataclass(frozen=True)
class LinkDown:
    peer: bytes


@dataclass(frozen=True)
class Received:
    """A message arrived over the link to ``peer`` (libp2p authenticated ``peer``)."""

    peer: bytes
    message: Message


@dataclass(frozen=True)
class Malformed:
    """A frame from ``peer`` that did not decode (the driver's decoder raised ProtocolError)."""

    peer: bytes
    reason: str


@dataclass(frozen=True)
class PeersFound:
    """Members of the swarm found by discovery (the DHT's rendezvous entries)."""

    machines: tuple[bytes, ...]


@dataclass(frozen=True)
class RecordReady:
    """Our own record of ``record.step`` is computed and signed (``Compute`` done)."""

    record: Record
    seconds: float  # compute time, for the round deadlines others derive from ours


@dataclass(frozen=True)
class ComputeFailed:
    step: int
    reason: str


@dataclass(frozen=True)
class StepSealed:
    """The replica applied step ``step`` (``Seal`` done); ``digest`` when step + 1 is a digest step."""

    step: int
    digest: bytes | None = None


@dataclass(frozen=True)
class Rebuilt:
    """A rebuild (late records, a heal) finished; the replica is again at ``sealed`` steps,
    and ``digests`` holds its digest at every digest step it passed through."""

    sealed: int
    digests: dict[int, bytes] = field(default_factory=dict)
    ok: bool = True  # False: no checkpoint old enough was left to rebuild from (the weights are as they were)
    kept: bool = True  # False: the replay missed the expected digest and the replaced records are back


@dataclass(frozen=True)
class CheckpointInstalled:
    """``FetchCheckpoint`` done: ok with the replica now at ``step`` sealed steps, or failed."""

    step: int
    ok: bool


@dataclass(frozen=True)
class Stop:
    """Leave the swarm (graceful)."""


Event = (Tick | LinkUp | LinkDown | Received | Malformed | PeersFound | RecordReady | ComputeFailed | StepSealed
         | Rebuilt | CheckpointInstalled | Stop)


# --- actions ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Send:
    peer: bytes
    message: Message


@dataclass(frozen=True)
class Connect:
    peer: bytes


@dataclass(frozen=True)
class Disconnect:
    peer: bytes


@dataclass(frozen=True)
class Compute:
    """Compute our record for ``step`` on the current weights (at least ``step - spec.delay`` sealed steps)."""

    step: int


@dataclass(frozen=True)
class Seal:
    """Apply step ``step`` with exactly ``records`` (admitted): they join the ledger, and any
    other record the ledger holds for that step leaves it (our own record computed after the
    swarm sealed the step without it: never published, so never applied anywhere else)."""

    step: int
    records: tuple[Record, ...]


@dataclass(frozen=True)
class Rebuild:
    """Add ``records`` (admitted, of sealed steps) to the ledger, or with ``replace`` make
    steps ``first``..``last``-1 hold exactly them, then rebuild the replica from the newest
    trusted checkpoint at or before ``first`` up to the current sealed step."""

    first: int
    records: tuple[Record, ...]
    replace: bool = False
    last: int = 0
    trusted: dict[int, bytes] = field(default_factory=dict)  # step -> digest a checkpoint must have
    expect: tuple[int, bytes] | None = None  # with replace: keep the substitution only if the digest after
                                             # that step comes out so; else restore the records replaced


@dataclass(frozen=True)
class FetchCheckpoint:
    """Download a checkpoint of ``step`` sealed steps whose weights hash to ``digest``, from
    one of ``peers`` (in order), install it, and replay the ledger from it to ``replay_to``."""

    step: int
    digest: bytes
    peers: tuple[bytes, ...]
    replay_to: int


@dataclass(frozen=True)
class ServeRange:
    """Send ``peer`` every record of steps first..last-1 from the ledger on disk (the core
    keeps only recent steps in memory)."""

    peer: bytes
    first: int
    last: int


@dataclass(frozen=True)
class Log:
    """Something worth telling the user or the JSON log."""

    event: str
    fields: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Fail:
    """The core cannot go on (e.g. its history must be repaired from peers and none answers)."""

    reason: str


@dataclass(frozen=True)
class Finished:
    """The swarm reached the target and the final digests are settled: the driver may stop."""

    summary: dict


Action = (Send | Connect | Disconnect | Compute | Seal | Rebuild | FetchCheckpoint | ServeRange | Log | Fail
          | Finished)
