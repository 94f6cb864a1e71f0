"""The swarm core: every rule of a seedswarm peer, as a pure state machine.

``SwarmCore.feed(event, now)`` takes one event (a frame from a neighbour, a timer, our own
record computed, a step sealed, ...) and returns the actions it calls for (send, seal,
compute, rebuild, fetch a checkpoint, log). It does no I/O, reads no clock and draws no
randomness but its own seeded generator, so the same events give the same actions: the
simulator (peer/sim.py) runs hundreds of cores over a simulated network from one seed, and
every rule below is unit-tested without sockets.

A peer's life:

1. **join**: link to members found by discovery and learn where the swarm is from the
   neighbours' status (the lower median, so a minority of liars cannot move it). A fresh
   swarm waits for ``min_peers`` and starts at step 0; a peer behind catches up by
   replaying the ledger (range requests) or from a checkpoint whose digest peers with
   standing vouch for.
2. **rounds**: our record of step t is computed on the weights after t - ``spec.delay``
   sealed steps, so a step's records spread while the next ones are computed. Step t is
   sealed when every expected author (those applied at t - 1) is in, or a deadline adapted
   to measured arrival times passes, or most of them visibly sealed t already; sealing
   applies the step's records through the step rule (protocol.aggregation).
3. **late records** (at most ``late_window`` steps old) are admitted, so replicas that
   hold the same records converge, and applied at their canonical place by a rebuild; a
   flood of late records costs at most one rebuild per ``rebuild_every`` steps.
4. **votes and healing** (trust.py): once a digest step can no longer change, neighbours
   exchange signed votes; a replica outvoted by a standing majority adopts a supporter's
   records for the disputed steps and rebuilds, or installs a checkpoint with the winning
   digest; on a split (no majority) the side that does not lead adopts the leader's
   records if they reproduce its digest, and never its weights.
5. **finish**: at the target step, a final vote among neighbours, then ``Finished``; a
   finished core keeps answering its neighbours until the driver stops it.

Admission (what a record must be before it touches the ledger) is
``protocol.admission.check_record`` (signature, exact sample count, ticket) plus the time
rules here: no step ``future_window`` or more ahead of what we sealed, none more than
``late_window`` behind (one record per author and step, so a flood is bounded too). A neighbour is blamed
only for bytes it could have checked itself (malformed frames, bad signatures, unsolicited
replies, flooding); one that passes ``max_rejects`` is dropped and banned for a while.
Records that are valid but untimely count against their author, never the neighbour.
"""

from __future__ import annotations

import math
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ...protocol.admission import check_record, check_vote
from ...protocol.errors import ProtocolError
from ...protocol.identity import Signer
from ...protocol.ledger import DUPLICATE, EQUIVOCATION, NEW, REDUNDANT, Ledger
from ...protocol.messages import (MAX_BATCH, MAX_RANGE, Bye, Gossip as GossipFrame, Peers, RangeReply, RangeRequest,
                                  Status, Vote, Votes)
from ...protocol.records import Record
from ...protocol.spec import SwarmSpec
from .events import (Action, CheckpointInstalled, Compute, ComputeFailed, Connect, Disconnect, Fail, FetchCheckpoint, Finished,
                     LinkDown, LinkUp, Log, Malformed, PeersFound, Rebuild, Rebuilt, Received, RecordReady, Seal, Send,
                     ServeRange, StepSealed, Stop, Tick)
from .gossip import Gossip
from .trust import Standing, Tally, Votes as VoteBook

JOIN_MODES = ("checkpoint", "replay")
# seconds before redialing a peer that refused our link, doubling to the cap. Short: under churn a
# full peer frees a slot soon (with a 60 s cap, one simulated run at N = 1,000 had 10% slower steps)
REFUSED_BACKOFF, REFUSED_BACKOFF_MAX = 2.5, 10.0


def checkpoints_to_keep(late_window: int, checkpoint_every: int, minimum: int = 3) -> int:
    """How many checkpoints a replica keeps so that one its neighbours have voted on is always
    among them: a step is voted on once it leaves the late window (``late_window + 1`` steps
    after it is sealed), so a newcomer joining by checkpoint needs the newest checkpoint at
    least that old and the one before it (whose votes have surely arrived)."""
    return max(minimum, -(-(late_window + 1 + checkpoint_every) // checkpoint_every) + 1)


@dataclass
class CoreConfig:
    """A peer's local settings (what replicas must agree on is in the SwarmSpec)."""

    target: int = 100              # train until this many steps are sealed
    training: bool = True          # compute and publish records (False: follow only)
    min_peers: int = 1             # a fresh swarm starts when this many peers (us included) are linked
    join_by: str = "checkpoint"    # how a peer behind the swarm catches up: "checkpoint" or "replay"
    checkpoint_every: int = 20     # the replica keeps a checkpoint every this many steps
    max_links: int = 6             # overlay degree we dial up to ...
    max_accept: int = 8            # ... and the most links we keep, dialled or accepted
    eager: int = 2                 # neighbours a forwarded record is pushed to whole (the others get its id)
    frame_interval: float = 0.5    # at most one gossip frame per link this often ...
    lazy_interval: float = 1.0     # ... and this often for what is not on the critical path
    backups: bool = True           # announce records a neighbour should have from their author: insurance
                                   # against lost frames (the simulator's loss model); libp2p streams are
                                   # reliable and a broken one is re-introduced on reconnect
    want_timeout: float = 1.0
    status_interval: float = 5.0
    peers_interval: float = 30.0
    start_timeout: float = 10.0    # how long a newcomer waits for its neighbours' status
    settle: float = 2.0            # ... after the first one, before acting on fewer than three
    link_timeout: float = 30.0     # a neighbour silent this long is dropped
    dial_timeout: float = 20.0
    min_wait: float = 0.3          # a round waits for missing authors at least this long ...
    max_wait: float = 30.0         # ... at most this long; between: 1.5 x the 95th percentile of how
    first_wait: float = 5.0        # long after a round's start records arrive (late ones included) + 0.25 s;
                                   # this long while fewer than 16 arrivals are measured
    range_timeout: float = 15.0
    standing_window: int = 64
    standing_cap: int = 16         # a vote weighs min(standing, cap): members count alike, newcomers ramp up
    rebuild_every: int = 4         # late records are applied by at most one rebuild per this many steps
    vote_grace: float = 2.0        # seconds to wait for neighbours' votes before a tally
    finish_timeout: float = 60.0   # how long a finished peer waits for its neighbours' final votes
    alone_after: float = 120.0     # min_peers 1, cut off from peers it trained with: seal alone after this
    rate_limit: int = 200          # frames per second a neighbour may send
    max_rejects: int = 32          # refused inputs a neighbour could have checked, before it is dropped
    ban_seconds: float = 600.0
    max_known: int = 1024          # members remembered for dialing
    ahead_cap: int = 2048          # records held aside while catching up (see _hold_ahead)
    needs_peers: str = ""          # why this replica may not start alone (its history must be repaired
                                   # from peers); empty: it may be the first peer of a swarm


@dataclass
class _Round:
    """Bookkeeping of the step being collected, kept incrementally (O(1) per record)."""

    step: int
    started: float
    expected: set[bytes]           # authors we wait for
    missing: set[bytes]            # ... of whom no record of this step is here yet
    ahead: set[bytes]              # ... who published for a step that shows they sealed this one
    fresh: bool = False            # no history to say who trains (a new swarm): wait the full deadline
    first_seen: float | None = None
    excused: int = 0               # missing authors no longer waited for on a departure notice


@dataclass
class _Range:
    peer: bytes
    first: int
    last: int
    deadline: float
    purpose: str                   # "catchup", "heal" or "standing"
    records: list[Record] = field(default_factory=list)


@dataclass
class _Heal:
    step: int                      # the digest step we were outvoted on
    winner: bytes
    supporters: tuple[bytes, ...]
    first: int                     # the newest step where we still agreed: replaced from here
    started: float
    stage: str = "fetch"           # wait_link -> fetch -> rebuild -> (checkpoint)
    records: list[Record] = field(default_factory=list)
    majority: bool = True          # False: following the leader of a split, by its records only
    source: bytes = b""            # the supporter whose records we fetched
    timeouts: int = 0              # range requests that timed out (each supporter gets two tries)
    previous: list[Record] = field(default_factory=list)  # our records of the disputed steps (to restore)


class SwarmCore:
    """One peer's rules. See the module docstring; ``feed`` is the only entry point."""

    def __init__(self, spec: SwarmSpec, signer: Signer, config: CoreConfig, *, ticket: bytes = b"",
                 sealed: int = 0, ledger: Ledger | None = None, digests: dict[int, bytes] | None = None,
                 verify: Callable[[SwarmSpec, Record], Record] = check_record,
                 verify_vote: Callable[[SwarmSpec, Vote], Vote] = check_vote, seed: int | None = None) -> None:
        if config.join_by not in JOIN_MODES:
            raise ValueError(f"join_by must be one of {JOIN_MODES}")
        self.spec, self.signer, self.cfg, self.ticket = spec, signer, config, ticket
        self.me = signer.machine
        self.swarm = spec.swarm_id
        self._verify, self._verify_vote = verify, verify_vote
        self.rng = random.Random(int.from_bytes(self.me[-8:], "big") if seed is None else seed)
        self.gossip = Gossip(self.rng, config.eager, config.frame_interval, config.want_timeout,
                             lazy_interval=config.lazy_interval, backups=config.backups)
        self.ledger = Ledger()                     # the unsealed pool and the last few sealed steps
        self.standing = Standing(config.standing_window)
        self.votes = VoteBook()
        self.digests: dict[int, bytes] = dict(digests or {})
        self.sealed = sealed                       # steps the replica has applied
        self.horizon = sealed                      # steps for which a Seal was issued
        self.floor = 0                             # our history starts here (a checkpoint we joined from)
        self.phase = "start"
        self.now = 0.0
        self.started: float | None = None
        self.round: _Round | None = None
        self.own: dict[int, Record] = {}
        self._first_own = 0                        # no record of ours below this step: after catching up,
                                                   # the step being collected would get ours too late
        self.computing: int | None = None
        self.step_time = 0.0                       # our compute seconds per step (moving average)
        self._arrivals: deque[float] = deque(maxlen=256)  # seconds after its round's start a record came
        self._p95: float | None = None  # ... their 95th percentile (None: to recompute)
        self._round_starts: dict[int, tuple[float, frozenset]] = {}  # step -> (start, authors expected then)
        self._late: list[Record] = []
        self._last_rebuild = -(1 << 30)             # horizon at the last late-record rebuild
        self.late_by: Counter[bytes] = Counter()    # late records admitted, per author
        self.equivocators: dict[bytes, int] = {}    # machines caught signing two records of a step -> that step
        self._busy = 0                             # rebuilds / checkpoint installs in flight
        self.known: dict[bytes, float] = {}        # members we could dial -> when first heard of
        self.departed: dict[bytes, float] = {}
        self.banned: dict[bytes, float] = {}
        # peers that closed our fresh link before a status (full: at max_accept) -> (not before, backoff)
        self._refused: dict[bytes, tuple[float, float]] = {}
        self.rejects_from: Counter[bytes] = Counter()   # per neighbour: inputs it could have checked
        self.rejects_of: Counter[bytes] = Counter()     # per author: signed records refused
        self.reasons: Counter[str] = Counter()
        self._range: _Range | None = None
        self._standing_ranges: list[_Range] = []
        self._standing_done: list[_Range] = []
        self._join_deadline = 0.0
        self._join_digest: bytes | None = None
        self._heal: _Heal | None = None
        self._tallies: dict[int, float] = {}       # digest step -> when to tally it
        self._to_cast: set[int] = set()            # settled digest steps we have yet to vote on
        self._voted: set[int] = set()
        # one entry per Rebuild not yet answered, in order (the replica runs them in order):
        # True for a heal's, so a late records' Rebuilt is never taken for the heal's
        self._rebuilds: deque[bool] = deque()
        self._misled_by: dict[bytes, float] = {}   # served records that missed the digest it led a split with:
                                                   # not followed on a split again until then
        self.revision = 0
        self.heals = 0
        self.late_applied = 0
        self.records_applied = 0
        self._final_at: float | None = None
        self._final_voted_at: float | None = None
        self._final_heals = 0
        self._next_status = 0.0
        self._next_peers = 0.0
        self._peers_sent = -1e9
        self._links_changed = False
        self._dialing: dict[bytes, float] = {}
        self._discovered = False                   # the first discovery round reported (even if empty)
        self._first_status: float | None = None
        self._enough = True  # min_peers take part (see _enough_peers)
        self._cut_since: float | None = None  # when we lost every link to peers training with us
        self._closing: set[bytes] = set()          # links we close ourselves
        self._said_publishing = False
        self._left_of: dict[bytes, int] = {}       # departure notices: machine -> first step it misses
        self._statuses_seen = 0
        self._next_maintain = 0.0
        self._frontier_cache: tuple = (None, 0)
        self._latest: dict[bytes, int] = {}        # machine -> the latest step of a record of it we took
        self._held_back = False                    # sealing waits for the neighbours (see _seal_limit)
        self._ahead: dict[bytes, tuple[Record, bytes]] = {}  # rid -> (record, neighbour): see _hold_ahead
        self._ahead_low: float = math.inf  # the lowest step held there (a lower bound)
        if ledger is not None:  # a restart: what the ledger on disk tells about recent history
            for step in ledger.steps():
                if step >= sealed - self._keep():
                    for r in ledger.at(step):
                        self.ledger.add(r)
                        self.gossip.note(r.rid, r.step)
                        if step >= sealed and r.machine == self.me:
                            self.own[step] = r  # published before a restart: never computed twice
            self.standing.reset([(s, tuple(r.machine for r in ledger.applicable(s)))
                                 for s in ledger.steps() if sealed - config.standing_window <= s < sealed])

    # ====================================================================================== feed
    def feed(self, event, now: float) -> list[Action]:
        self.now = self.gossip.now = now
        out: list[Action] = []
        if self.started is None:
            self.started = now
        if self.phase == "done":  # finished or leaving: keep answering neighbours, nothing else
            if isinstance(event, Received) and isinstance(event.message, (GossipFrame, RangeRequest, Status, Bye)):
                self._received(event.peer, event.message, out)
            elif isinstance(event, LinkUp):
                self._link_up(event.peer, out)
            elif isinstance(event, LinkDown):
                self._link_down(event.peer, out)
            out.extend(Send(p, m) for p, m in self.gossip.flush(now))
            return out
        if isinstance(event, Received):
            self._received(event.peer, event.message, out)
        elif isinstance(event, LinkUp):
            self._link_up(event.peer, out)
        elif isinstance(event, LinkDown):
            self._link_down(event.peer, out)
        elif isinstance(event, Malformed):
            self._blame(event.peer, f"malformed frame ({event.reason})", out)
        elif isinstance(event, PeersFound):
            self._discovered = True
            self._learn_peers(event.machines)
        elif isinstance(event, RecordReady):
            self._record_ready(event.record, event.seconds, out)
        elif isinstance(event, ComputeFailed):
            self.computing = None
            out.append(Log("compute_failed", {"step": event.step, "reason": event.reason}))
            out.extend(Send(peer, Bye()) for peer in self.gossip.links)
            self.phase = "done"
            out.append(Finished(self.summary()))
            return out
        elif isinstance(event, StepSealed):
            self._step_sealed(event.step, event.digest, out)
        elif isinstance(event, Rebuilt):
            self._rebuilt(event, out)
        elif isinstance(event, CheckpointInstalled):
            self._checkpoint_installed(event, out)
        elif isinstance(event, Stop):
            out.extend(Send(peer, Bye()) for peer in self.gossip.links)
            self.phase = "done"
            return out
        elif not isinstance(event, Tick):
            raise TypeError(f"not an event: {event!r}")
        self._advance(out)
        return out

    # ================================================================================ neighbours
    def _link_up(self, peer: bytes, out: list) -> None:
        self._dialing.pop(peer, None)
        if (peer == self.me or self.banned.get(peer, 0) > self.now or peer in self.gossip.links
                or len(self.gossip.links) >= self.cfg.max_accept):
            if peer not in self.gossip.links:
                self._disconnect(peer, out)
            return
        self.gossip.add_link(peer, self.now)
        self.known.setdefault(peer, self.now)
        self.departed.pop(peer, None)
        out.append(Send(peer, self._status()))
        out.append(Send(peer, self._peers_message(peer)))
        self._links_changed = True
        # our votes of every step it weighs (section 13): votes trail the seal by the late window,
        # and a newcomer picks the checkpoint to join by from them
        since = self.sealed - 8 * self.spec.digest_every - self.spec.late_window
        votes = [v for v in self.votes.recent(since) if v.machine == self.me]
        if votes:
            out.append(Send(peer, Votes(tuple(votes[-MAX_BATCH:]))))
        # our records of steps not sealed yet, and of the sealed steps a late record may still
        # join: a new neighbour may not have them (after a crash, a record may never have left)
        recent = [r for step in range(max(0, self.horizon - self.spec.late_window), self.horizon)
                  for r in self.ledger.at(step) if r.machine == self.me]
        pending = recent + [r for step, r in sorted(self.own.items()) if step >= self.horizon]
        if pending:
            self.gossip.answer(peer, pending)
        self.gossip.introduce(peer, self.horizon - 1)  # the ids of the rounds in flight

    def _link_down(self, peer: bytes, out: list) -> None:
        link = self.gossip.links.get(peer)
        if link is not None:
            self._links_changed = True
            if peer in self._closing:
                pass  # we closed it
            elif link.status is None:
                # it closed the link before saying anything: full (max_accept), or going. Redialing
                # it every maintenance round would cost both of us a handshake (status and peers)
                # each time: back off, doubling, while it keeps refusing
                _, backoff = self._refused.get(peer, (0.0, REFUSED_BACKOFF / 2))
                backoff = min(2 * backoff, REFUSED_BACKOFF_MAX)
                self._refused[peer] = (self.now + backoff, backoff)
            else:
                self._neighbour_left(peer, out)  # it crashed, or the network between us failed
        self._closing.discard(peer)
        self.gossip.drop_link(peer)
        self._dialing.pop(peer, None)
        if self._range is not None and self._range.peer == peer:
            self._range.deadline = -math.inf  # its reply went with the link: retry now, not at the timeout

    def _disconnect(self, peer: bytes, out: list) -> None:
        """We close this link (its LinkDown says nothing about the peer's health)."""
        self._closing.add(peer)
        out.append(Disconnect(peer))

    # ================================================================================ departures
    def _neighbour_left(self, peer: bytes, out: list) -> None:
        """A neighbour the round waits for is gone (link lost, or it said bye): tell the swarm, so
        that nobody waits a deadline for a record that cannot come. Only its neighbours see it go."""
        rnd = self.round
        if rnd is None or self.phase != "train" or peer not in rnd.expected:
            return
        step = rnd.step if peer in rnd.missing else rnd.step + 1  # the first step it will miss
        self._accept_left(peer, step, None, out)

    def _departures(self, sender: bytes, left, out: list) -> None:
        """A departure notice is a hint, never evidence: a member we are linked to is alive to us
        (ignored, not passed on); notices shorten at most a few waits per round (so a liar can
        only make some records late, never lost: they are admitted as late records); a record
        of the member at or after that step cancels it."""
        for machine, step in left:
            if self.horizon - self.spec.late_window <= step <= self.horizon + self.spec.future_window:
                self._accept_left(machine, step, sender, out)

    def _accept_left(self, machine: bytes, step: int, sender: bytes | None, out: list) -> None:
        if machine == self.me or self._left_of.get(machine, -1) >= step:
            return
        if sender is not None and machine in self.gossip.links:
            return  # alive to us
        rnd = self.round
        if rnd is not None and machine in rnd.missing and rnd.step >= step:
            if rnd.excused >= max(2, len(rnd.expected) // 32):
                return  # more departures in one round than churn explains: wait for the rest
            rnd.excused += 1
        if rnd is not None and rnd.step >= step:
            rnd.missing.discard(machine)
            rnd.expected.discard(machine)
        self._left_of[machine] = step  # (not `departed`: it stays a member we may dial, e.g. after a partition)
        self.gossip.departed(machine, step, sender)

    def _peers_message(self, to: bytes) -> Peers:
        """Our neighbours (so ``to`` knows whom we get records from directly) and a sample of
        other members we know (peer exchange)."""
        neighbours = tuple(sorted(p for p in self.gossip.links if p != to))[:MAX_BATCH]
        return Peers(neighbours, tuple(self._sample_known(8, exclude=to)))

    def _learn_peers(self, machines) -> None:
        for m in machines:
            if m != self.me and self.banned.get(m, 0) <= self.now:
                self.known.setdefault(m, self.now)
        if len(self.known) > self.cfg.max_known:
            for m in sorted(self.known, key=lambda k: (self.known[k], k))[: len(self.known) - self.cfg.max_known]:
                del self.known[m]

    def _sample_known(self, k: int, exclude: bytes) -> list[bytes]:
        pool = sorted(m for m in self.known if m != exclude and m not in self.departed)
        return self.rng.sample(pool, min(k, len(pool)))

    def _maintain_links(self, out: list) -> None:
        now = self.now
        if now < self._next_maintain:
            return
        self._next_maintain = now + 0.5
        for peer, link in list(self.gossip.links.items()):
            if now - link.last_heard > self.cfg.link_timeout:
                if link.status is not None:
                    self._neighbour_left(peer, out)  # silent this long: as good as gone
                self.gossip.drop_link(peer)
                self._disconnect(peer, out)
        for peer, since in list(self._dialing.items()):
            if now - since > self.cfg.dial_timeout:
                del self._dialing[peer]
        for peer, (until, _) in list(self._refused.items()):
            if until + REFUSED_BACKOFF_MAX < now:  # refused long ago: forget (bounded by dials made)
                del self._refused[peer]
        need = self.cfg.max_links - len(self.gossip.links) - len(self._dialing)
        if need > 0:
            candidates = sorted(m for m in self.known if m not in self.gossip.links and m not in self._dialing
                                and m not in self.departed and self.banned.get(m, 0) <= now
                                and self._refused.get(m, (0.0,))[0] <= now)
            for peer in self.rng.sample(candidates, min(need, len(candidates))):
                self._dialing[peer] = now
                out.append(Connect(peer))

    def _publishing(self) -> bool:
        """What our status's training flag says: we publish records now (a peer that has just
        caught up publishes from _first_own on; until then nobody should wait for it)."""
        return self.cfg.training and self.phase == "train" and self.horizon >= self._first_own

    def _status(self) -> Status:
        training = self._publishing()
        ckpt = self.sealed // self.cfg.checkpoint_every * self.cfg.checkpoint_every
        return Status(self.sealed, Status.TRAINING if training else 0, ckpt, int(self.step_time * 1000))

    # ================================================================================== messages
    def _received(self, peer: bytes, msg, out: list) -> None:
        link = self.gossip.links.get(peer)
        if link is None:  # not (or no longer) a neighbour
            return
        link.last_heard = self.now
        if self.now - link.window_start >= 1.0:
            link.window_start, link.window_messages = self.now, 0
        link.window_messages += 1
        if link.window_messages > self.cfg.rate_limit:
            self._blame(peer, "rate limit", out)
            return
        if isinstance(msg, GossipFrame):
            if msg.records and self.phase != "done":
                self._records(peer, msg.records, out)
            if msg.have and self.phase != "done":
                self.gossip.heard_of(peer, msg.have, self._holds, self.now)
            if msg.want:
                self.gossip.answer(peer, [r for r in map(self._by_rid, msg.want) if r is not None])
            if msg.left and self.phase != "done":
                self._departures(peer, msg.left, out)
        elif isinstance(msg, Status):
            if self._first_status is None:
                self._first_status = self.now
            if link.status is None:
                self._refused.pop(peer, None)
            link.status = msg
            self._statuses_seen += 1
            rnd = self.round
            if (msg.training and rnd is not None and peer not in rnd.expected and msg.sealed + 2 >= rnd.step
                    and (rnd.fresh or self.standing(peer) > 0) and peer not in self.equivocators and self._left_of.get(peer, rnd.step + 1) > rnd.step):
                rnd.expected.add(peer)  # a neighbour that started training: expect its record
                if not self.ledger.applies(rnd.step, peer):
                    rnd.missing.add(peer)
        elif isinstance(msg, RangeRequest):
            self._serve_range(peer, msg, out)
        elif isinstance(msg, RangeReply):
            self._range_reply(peer, msg, out)
        elif isinstance(msg, Votes):
            self._votes(peer, msg.votes, out)
        elif isinstance(msg, Peers):
            link.neighbours = frozenset(msg.neighbours)
            self._learn_peers(msg.machines[:64])
        elif isinstance(msg, Bye):
            self._neighbour_left(peer, out)
            self.departed[peer] = self.now
            self.gossip.drop_link(peer)
            if self.round is not None:
                self.round.missing.discard(peer)
                self.round.expected.discard(peer)
            self._disconnect(peer, out)

    def _holds(self, rid: bytes) -> bool:
        """Admitted, or held aside until our window reaches it (nothing to ask anyone for)."""
        return self.gossip.step_of(rid) is not None or rid in self._ahead

    def _by_rid(self, rid: bytes) -> Record | None:
        return self.ledger.get(rid)

    def _blame(self, peer: bytes, reason: str, out: list) -> None:
        """Input a neighbour could have checked itself was bad: count it; past max_rejects the
        neighbour is dropped and banned for ban_seconds."""
        self.reasons[reason.split(" (")[0]] += 1
        self.rejects_from[peer] += 1  # (cumulative: every max_rejects more get it banned again)
        if self.rejects_from[peer] % self.cfg.max_rejects == 0 and peer in self.gossip.links:
            self.banned[peer] = self.now + self.cfg.ban_seconds
            self.gossip.drop_link(peer)
            self._disconnect(peer, out)
            out.append(Log("banned", {"peer": peer.hex(), "last_reason": reason}))

    def _refuse(self, author: bytes, reason: str) -> None:
        """A valid, signed record we will not take (untimely, over budget, equivocating)."""
        self.reasons[reason] += 1
        self.rejects_of[author] += 1

    # ================================================================================ admission
    def _records(self, peer: bytes | None, records, out: list, fetched: tuple[int, int] | None = None) -> None:
        """Admit records pushed by ``peer`` (new ones are passed on), or ``fetched`` by our own
        range request for steps first..last-1 (already verified; not passed on)."""
        for record in records:
            rid = record.rid
            if peer is not None:
                self.gossip.mark_known(peer, rid)
            if self.gossip.step_of(rid) is not None:
                continue
            if rid in self._ahead:
                if fetched is None:
                    continue
                del self._ahead[rid]  # a source sealed it: admitted with its step, now
            outcome = self._admit(record, peer, fetched, out)
            if outcome is None:
                continue
            if fetched is None:
                self.gossip.learned(record, rid, peer, own=False)
            else:
                self.gossip.note(rid, record.step)
            self._round_saw(record, outcome, fetched is not None)

    def _admit(self, record: Record, peer: bytes | None, fetched, out: list) -> str | None:
        step = record.step
        if fetched is not None:
            if not max(fetched[0], self.horizon) <= step < fetched[1]:
                return None  # sealed meanwhile: nothing to do with it
        else:
            if step >= self.horizon + self.spec.future_window:
                if peer is None or not self._hold_ahead(record, peer, out):
                    self._refuse(record.machine, "too far ahead")
                return None
            if step < self.horizon - self.spec.late_window or step < self.floor:
                self._refuse(record.machine, "too late")
                return None
            try:
                self._verify(self.spec, record)
            except ProtocolError as exc:
                if peer is not None:
                    self._blame(peer, f"inadmissible record ({exc})", out)
                return None
        late = step < self.horizon
        outcome = self.ledger.add(record)
        if outcome in (REDUNDANT, DUPLICATE):
            return None
        if step > self._latest.get(record.machine, -1):
            self._latest[record.machine] = step
        if outcome == EQUIVOCATION:
            self._refuse(record.machine, "equivocation")
            self.equivocators.setdefault(record.machine, step)
            out.append(Log("equivocation", {"machine": record.machine.hex(), "step": step}))
        if late:
            self._late.append(record)
            self.late_by[record.machine] += 1
        return outcome

    def _hold_ahead(self, record: Record, peer: bytes, out: list) -> bool:
        """Hold aside a record ahead of our future window while we are behind the swarm (True:
        held, or already judged). A peer catching up by range fetches only what its sources
        have sealed; the records of the steps the swarm is collecting were pushed to it
        meanwhile and, refused, would reach it no other way: on arrival where the swarm is, it
        would wait a round deadline for them, fall behind again and catch up again, round after
        round. Only records of steps below where most neighbours are (the lower median of their
        sealed counts) + future_window, verified, at most ``ahead_cap``: a liar can neither
        choose what is held nor make it grow. They are admitted as our horizon reaches them."""
        if record.rid in self._ahead:
            return True
        reach = max(self.horizon, self._frontier()) + self.spec.future_window
        if record.step >= reach or len(self._ahead) >= self.cfg.ahead_cap:
            return False
        try:
            self._verify(self.spec, record)
        except ProtocolError as exc:
            self._blame(peer, f"inadmissible record ({exc})", out)
            return True
        self._ahead[record.rid] = (record, peer)
        self._ahead_low = min(self._ahead_low, record.step)
        return True

    def _release_ahead(self, out: list) -> None:
        """Submit the held records that our window now reaches to admission again."""
        limit = self.horizon + self.spec.future_window
        if self._ahead_low >= limit:
            return  # (asked on every event while records are held: no scan until one is due)
        ready = sorted((r for r, _ in self._ahead.values() if r.step < limit), key=lambda r: r.step)
        for record in ready:
            _, peer = self._ahead.pop(record.rid)
            self._records(peer if peer in self.gossip.links else None, [record], out)
        self._ahead_low = min((r.step for r, _ in self._ahead.values()), default=math.inf)

    # ===================================================================================== votes
    def _votes(self, peer: bytes, votes, out: list) -> None:
        """A neighbour's own digest votes. Votes are not forwarded: each replica weighs the
        votes of its neighbours, a sample of the swarm whose size does not grow with it."""
        low = self.sealed - 8 * self.spec.digest_every - self.spec.late_window
        high = max(self.horizon, self._frontier()) + self.spec.future_window  # a newcomer weighs the swarm's votes
        for vote in votes:
            if vote.machine != peer:
                self._blame(peer, "a vote of another machine", out)
                continue
            if not low <= vote.step <= high:
                continue  # not useful now; not an offence (views of the swarm differ a little)
            try:
                self._verify_vote(self.spec, vote)
            except ProtocolError as exc:
                self._blame(peer, f"bad vote ({exc})", out)
                continue
            if (self.votes.add(vote) and vote.step in self._voted and vote.step not in self._tallies
                    and vote.digest != self.digests.get(vote.step) and self.weight(peer) > 0):
                # a disagreeing vote after our tally (it was cut off, or it revised its weights)
                self._tallies[vote.step] = self.now + self.cfg.vote_grace

    def _cast(self, step: int, out: list) -> None:
        digest = self.digests.get(step)
        if digest is None:
            return
        vote = Vote.create(self.signer, self.swarm, step, digest, self.revision, self.ticket)
        self.votes.add(vote)
        self._voted.add(step)
        out.extend(Send(p, Votes((vote,))) for p in self.gossip.links)

    # ===================================================================================== ranges
    def _keep(self) -> int:
        """Sealed steps kept in memory: what late records need; older ranges come from disk."""
        return self.spec.late_window + 2

    def _serve_range(self, peer: bytes, req: RangeRequest, out: list) -> None:
        """Records of sealed steps only; the reply's ``last`` says how far we have sealed."""
        last = max(req.first, min(req.last, self.sealed))
        if req.first < last and req.first < self.sealed - self._keep() + 1:
            out.append(ServeRange(peer, req.first, last))  # older than our memory: from disk
            return
        records = self.ledger.ordered(req.first, last)
        chunks = [records[i:i + MAX_BATCH] for i in range(0, len(records), MAX_BATCH)] or [[]]
        for i, chunk in enumerate(chunks):
            out.append(Send(peer, RangeReply(req.first, last, i < len(chunks) - 1, tuple(chunk))))

    def _ask_range(self, peer: bytes, first: int, last: int, purpose: str, out: list) -> _Range:
        req = _Range(peer, first, min(last, first + MAX_RANGE), self.now + self.cfg.range_timeout, purpose)
        out.append(Send(peer, RangeRequest(req.first, req.last)))
        return req

    def _range_reply(self, peer: bytes, reply: RangeReply, out: list) -> None:
        pending = [r for r in [self._range, *self._standing_ranges] if r is not None and r.peer == peer
                   and r.first == reply.first and reply.last <= r.last]
        if not pending:
            self._blame(peer, "range reply nobody asked for", out)
            return
        req = pending[0]
        req.last = reply.last
        for record in reply.records:
            try:
                self._verify(self.spec, record)
            except ProtocolError as exc:
                self._blame(peer, f"inadmissible record in a range ({exc})", out)
                continue
            req.records.append(record)
        if reply.more:
            req.deadline = self.now + self.cfg.range_timeout
            return
        if req is self._range:
            self._range = None
            if req.purpose == "heal":
                self._heal_fetched(req, out)
            else:  # catch-up: the source's sealed records of those steps, with what we hold
                self._records(req.peer, req.records, out, fetched=(req.first, req.last))
                for step in range(max(self.horizon, req.first), req.last):
                    self._issue_seal(step, out)
        else:
            self._standing_ranges.remove(req)
            self._standing_done.append(req)
            self._maybe_join_by_checkpoint(out)

    # ===================================================================================== rounds
    def _new_round(self, step: int) -> None:
        """Expected authors: those applied at the last step, neighbours that say they train, and
        ourselves (an author whose record of the last step comes late is expected again as it
        arrives, see _round_saw; one that crashed costs one deadline, not two)."""
        expected = self.ledger.authors(step - 1) if step > 0 else set()
        fresh = not expected  # no history yet (a new swarm): every linked peer will train
        expected |= {p for p, link in self.gossip.links.items()  # (a status is a claim: standing first)
                     if link.status is not None and (fresh or (link.status.training and self.standing(p) > 0))}
        if self.cfg.training and step >= self._first_own:  # (just caught up: not before _first_own)
            expected.add(self.me)
        expected -= self.departed.keys()
        expected -= self.equivocators.keys()
        expected -= {m for m, left in self._left_of.items() if left <= step}
        present = self.ledger.authors(step)
        ahead: set[bytes] = set()
        for s in range(step + 1 + self.spec.delay, self.horizon + self.spec.future_window + 1):
            ahead |= self.ledger.authors(s)
        self.round = _Round(step, self.now, expected, expected - present, ahead & expected, fresh)
        self._round_starts[step] = (self.now, frozenset(expected))
        for old in [s for s in self._round_starts if s < step - self.spec.late_window]:
            del self._round_starts[old]
        if present - {self.me}:
            self.round.first_seen = self.now

    def _round_saw(self, record: Record, outcome: str, fetched: bool = False) -> None:
        started = self._round_starts.get(record.step)
        if (started is not None and record.machine in started[1] and record.machine != self.me and not fetched
                and record.step >= self.horizon - 1):
            # how long after a round's start the records of the authors it waited for arrive,
            # late ones included (so a slow author is waited for); what a range fetch brings, a
            # record more than a step late, or a newcomer's first record says nothing about that
            self._arrivals.append(max(0.0, self.now - started[0]))
            self._p95 = None
        left = self._left_of.get(record.machine)
        if left is not None and record.step >= left:  # a departure notice was wrong (or it is back)
            del self._left_of[record.machine]
        rnd = self.round
        if rnd is None:
            return
        if outcome == EQUIVOCATION or record.machine in self.equivocators:
            # an equivocator's records may be voided any time: never wait for one
            rnd.missing.discard(record.machine)
            rnd.expected.discard(record.machine)
            return
        if record.step == rnd.step:
            rnd.missing.discard(record.machine)
            rnd.expected.add(record.machine)
            if rnd.first_seen is None:
                rnd.first_seen = self.now
        elif record.step >= rnd.step + 1 + self.spec.delay and record.machine in rnd.expected:
            rnd.ahead.add(record.machine)
        elif (rnd.step - 2 <= record.step < rnd.step and record.machine not in rnd.expected
              and self._left_of.get(record.machine, rnd.step + 1) > rnd.step):
            # a late author is alive: wait for it this round too
            rnd.expected.add(record.machine)
            if not self.ledger.applies(rnd.step, record.machine):
                rnd.missing.add(record.machine)

    def _round_wait(self) -> float:
        if len(self._arrivals) < 16:
            return max(self.cfg.first_wait, 2.0 * self.step_time + 0.25)
        if self._p95 is None:  # (asked on every event: sorted once per new arrival)
            ordered = sorted(self._arrivals)
            self._p95 = ordered[int(0.95 * (len(ordered) - 1))]
        return min(max(1.5 * self._p95 + 0.25, self.cfg.min_wait), self.cfg.max_wait)

    def _maybe_compute(self, out: list) -> None:
        if not self.cfg.training or self.computing is not None:
            return
        for step in range(max(self.horizon, self._first_own), min(self.horizon + self.spec.delay + 1, self.cfg.target)):
            if step not in self.own:
                self.computing = step
                out.append(Compute(step))
                return

    def _try_seal(self, out: list) -> None:
        while self.phase == "train" and not self._busy and self.horizon < self.cfg.target:
            if self.round is None or self.round.step != self.horizon:
                self._new_round(self.horizon)
            rnd = self.round
            self._maybe_compute(out)
            others = len(rnd.expected - {self.me})
            moved_on = others > 0 and 2 * len(rnd.ahead - {self.me}) > others  # a strict majority
            if not moved_on:
                if self.cfg.training and rnd.step not in self.own and rnd.step >= self._first_own:
                    return
                start = rnd.first_seen if rnd.first_seen is not None else rnd.started
                if (rnd.missing or rnd.fresh) and self.now < start + self._round_wait():
                    return
                if rnd.missing and self._frontier() > rnd.step:
                    # most neighbours sealed this step already and we still miss authors: what
                    # they applied is the step's record set, not what happened to reach us
                    out.append(Log("behind", {"sealed": self.horizon, "frontier": self._frontier(),
                                              "missing": len(rnd.missing)}))
                    self.phase = "sync"
                    self._sync(out)
                    return
            limit = self._seal_limit()
            if limit is not None and rnd.step > limit:
                if not self._held_back:
                    self._held_back = True
                    out.append(Log("held_back", {"step": rnd.step, "limit": limit}))
                return
            if self._held_back:
                self._held_back = False
                out.append(Log("released", {"step": rnd.step}))
            if rnd.missing:
                out.append(Log("round_deadline" if not moved_on else "moved_on",
                               {"step": rnd.step, "missing": len(rnd.missing)}))
            self._issue_seal(rnd.step, out)

    def _seal_limit(self) -> int | None:
        """The last step we may seal now so that our next record stays inside most neighbours'
        future window, or None where no neighbour trains with us (then _enough_peers rules).

        A neighbour refuses a record of step r once r >= its horizon + future_window, and that
        record is then lost to it until a heal. A peer whose rounds end at deadlines (its
        links to the others are being re-dialed, and after one such step it expects nobody
        else) would otherwise seal at compute speed and every record it writes meanwhile
        would be refused. A neighbour takes part if its status says it trains or it wrote a
        record of the last steps; its progress is what its status says, or what its
        records prove (a record of step r is computed at horizon r - delay or later); the
        upper median of those is where most neighbours are, so a minority of slow or lying
        neighbours cannot hold us back."""
        delay = self.spec.delay
        progress = []
        for p, link in self.gossip.links.items():
            latest = self._latest.get(p, -1)
            if self.weight(p) > 0 and ((link.status is not None and link.status.training)
                                       or latest >= self.horizon - 2):
                progress.append(max(link.status.sealed if link.status is not None else 0, latest - delay))
        progress.sort()
        if not progress:
            return None
        # sealing step s lets us compute a record of step s + 1 + delay
        return progress[len(progress) // 2] + self.spec.future_window - delay - 2

    def _issue_seal(self, step: int, out: list) -> None:
        out.append(Seal(step, tuple(self.ledger.at(step))))
        self.horizon = step + 1
        self.own.pop(step, None)

    def _record_ready(self, record: Record, seconds: float, out: list) -> None:
        self.computing = None
        self.step_time = seconds if not self.step_time else 0.7 * self.step_time + 0.3 * seconds
        if record.step < self.horizon or self.phase not in ("train", "barrier"):
            out.append(Log("stale_record", {"step": record.step, "sealed": self.horizon}))
            # the swarm sealed that step without us: publishing it would only cause rebuilds.
            # Computing the next step in line would likely end the same way (we are a step or
            # more behind: a newcomer's first compute, a slow moment): restart our pipeline
            # where a record has a round of slack, as after catching up
            if self.phase == "train":
                self._first_own = max(self._first_own, self.horizon + self.spec.delay)
                if self.round is not None and self.round.step < self._first_own:
                    self.round.missing.discard(self.me)  # not waited for: it will not come
            return
        if self.ledger.add(record) != NEW:
            return
        self.own[record.step] = record
        self.gossip.learned(record, record.rid, None, own=True)
        self._round_saw(record, NEW)

    def _step_sealed(self, step: int, digest: bytes | None, out: list) -> None:
        if step + 1 <= self.sealed:
            return
        self.sealed = step + 1
        applied = self.ledger.applicable(step)
        self.records_applied += len(applied)
        self.standing.sealed(step, (r.machine for r in applied))
        if digest is not None:
            self.digests[self.sealed] = digest
        self._forget()
        out.append(Log("step", {"step": step, "records": len(applied), "peers": len(self.gossip.links) + 1,
                                "digest": digest.hex() if digest else None}))
        settled = self.sealed - self.spec.late_window - 1
        if settled > self.floor and settled % self.spec.digest_every == 0 and settled not in self._voted:
            self._to_cast.add(settled)

    def _forget(self) -> None:
        low = self.sealed - self._keep()
        if low <= 0:
            return
        self.gossip.forget_before(low)
        self.votes.forget_before(low - 8 * self.spec.digest_every)
        if self._left_of and min(self._left_of.values()) < low:
            self._left_of = {m: step for m, step in self._left_of.items() if step >= low}
        steps = self.ledger.steps()
        if steps and steps[0] < low - 16:  # trimmed in batches
            self.ledger = Ledger(self.ledger.ordered(low))
            self._latest = {m: step for m, step in self._latest.items() if step >= low}

    # ============================================================================= late records
    def _flush_late(self, out: list, force: bool = False) -> None:
        """Apply admitted late records by one rebuild, at most every rebuild_every steps (or
        now, when a vote or the finish needs the replica exact)."""
        if not self._late or self._busy:
            return
        if not force and self.horizon < self._last_rebuild + self.cfg.rebuild_every:
            return
        self._last_rebuild = self.horizon
        late, self._late = self._late, []
        first = min(r.step for r in late)
        self.late_applied += len(late)
        self._busy += 1
        self._rebuilds.append(False)
        out.append(Rebuild(first, tuple(late)))
        out.append(Log("late", {"records": len(late), "first_step": first}))

    def _rebuilt(self, event: Rebuilt, out: list) -> None:
        self._busy = max(0, self._busy - 1)
        self.digests.update(event.digests)
        if not event.ok:
            out.append(Log("rebuild_failed", {"sealed": event.sealed}))
        healing = self._rebuilds.popleft() if self._rebuilds else False
        if healing and self._heal is not None and self._heal.stage == "rebuild":
            self._heal_rebuilt(out)

    # ================================================================================== healing
    def _cast_due(self, out: list) -> None:
        """Vote on settled digest steps, once late records of those steps are applied."""
        for step in sorted(self._to_cast):
            if any(r.step < step for r in self._late):
                self._flush_late(out, force=True)
                return
            if self._busy or self._heal is not None:
                return  # (a heal in progress may replace the weights this vote would speak for)
            self._to_cast.discard(step)
            if step in self.digests:  # (none for a step we did not replay, e.g. before a checkpoint we joined from)
                self._cast(step, out)
                self._tallies[step] = self.now + self.cfg.vote_grace + self._round_wait()

    def _tally_due(self, out: list) -> None:
        for step, when in sorted(self._tallies.items()):
            if self.now < when or self._busy or self._heal is not None or self._range is not None:
                continue
            del self._tallies[step]
            self._act_on(self.votes.tally(step, self.weight, self.digests.get(step), self.me, self._established), out)

    def _act_on(self, tally: Tally, out: list) -> None:
        """Heal towards a standing majority's digest (records, then a checkpoint if need be);
        on a split, towards the leading digest by its supporters' records only (see trust.py):
        two honest replicas that sealed a step differently can never form a majority, and
        without this they would stay apart for good."""
        mine = self.digests.get(tally.step)
        if mine is None:
            return  # nothing of ours to compare
        target = tally.winner if not tally.split else tally.leader
        if target is None:
            return
        if target == mine:
            if tally.split:
                out.append(Log("split", {"step": tally.step, "leading_weight": tally.weight, "total": tally.total,
                                         "leading": True}))
            return
        supporters = tally.supporters if not tally.split else tuple(
            p for p in tally.leader_supporters if self._misled_by.get(p, 0) <= self.now)
        if not supporters:
            if tally.split:
                out.append(Log("split", {"step": tally.step, "leading_weight": tally.weight, "total": tally.total,
                                         "leading": False}))
            return
        self.heals += 1
        first = self._last_agreement(supporters, tally.step)
        self._heal = _Heal(tally.step, target, supporters, first, self.now, majority=not tally.split)
        out.append(Log("heal", {"step": tally.step, "mine": mine.hex() if mine else None, "winner": target.hex(),
                                "weight": tally.weight, "total": tally.total, "from_step": first,
                                "majority": not tally.split}))
        self._heal_fetch(out)

    def _last_agreement(self, supporters: tuple[bytes, ...], before: int) -> int:
        """The newest digest step before ``before`` at which a supporter voted our digest: the
        records from there on are the disputed ones (after a partition each side agreed within
        itself, so any agreement will not do); with no such vote held, our whole history."""
        for step in sorted((s for s in self.digests if self.floor < s < before), reverse=True):
            votes = self.votes.of(step)
            if any(votes[p].digest == self.digests[step] for p in supporters if p in votes):
                return step
        return self.floor

    def _heal_fetch(self, out: list) -> None:
        heal = self._heal
        peers = [p for p in heal.supporters if p in self.gossip.links]
        if not peers:
            for p in heal.supporters[:2]:
                if p not in self._dialing:
                    self._dialing[p] = self.now
                    out.append(Connect(p))
            heal.stage = "wait_link"
            return
        heal.stage = "fetch"
        heal.records = []
        self._range = self._ask_range(peers[0], heal.first, heal.step, "heal", out)

    def _heal_next_supporter(self, failed: bytes, out: list) -> None:
        """A supporter did not serve the disputed steps: ask the next one (or give up)."""
        heal = self._heal
        heal.supporters = tuple(p for p in heal.supporters if p != failed)
        if not heal.supporters:
            out.append(Log("healed", {"step": heal.step, "how": "no supporter answered", "ok": False}))
            self._heal = None
            return
        self._heal_fetch(out)

    def _heal_fetched(self, req: _Range, out: list) -> None:
        heal = self._heal
        if heal is None:
            return
        heal.records.extend(req.records)
        if req.first < req.last < heal.step:
            self._range = self._ask_range(req.peer, req.last, heal.step, "heal", out)
            return
        if req.last < heal.step:  # this supporter cannot serve the disputed steps
            self._heal_next_supporter(req.peer, out)
            return
        heal.stage = "rebuild"
        heal.source = req.peer
        self._busy += 1
        trusted = {heal.first: self.digests[heal.first]} if heal.first in self.digests else {}
        self._rebuilds.append(True)
        out.append(Rebuild(heal.first, tuple(heal.records), replace=True, last=heal.step, trusted=trusted,
                           expect=(heal.step, heal.winner)))
        heal.previous = [r for r in self.ledger.ordered() if heal.first <= r.step < heal.step]
        kept = [r for r in self.ledger.ordered() if not heal.first <= r.step < heal.step]
        kept += [r for r in heal.records if r.step >= self.sealed - self._keep()]
        self.ledger = Ledger(kept)
        for r in kept:
            self.gossip.note(r.rid, r.step)

    def _heal_rebuilt(self, out: list) -> None:
        """The supporter's records replayed: kept if they gave the winning digest. If not, our
        own records are back (History restored them), and we try once more with the whole
        history (our last agreement may be older than its votes said: it may have revised
        its weights since), then a checkpoint if a majority vouches for the digest."""
        heal = self._heal
        if self.digests.get(heal.step) == heal.winner:
            self._healed("ledger", out)
            return
        self.ledger = Ledger([r for r in self.ledger.ordered() if not heal.first <= r.step < heal.step]
                             + heal.previous)
        for r in heal.previous:
            self.gossip.note(r.rid, r.step)
        if heal.first > self.floor:
            heal.first = self.floor
            self._heal_fetch(out)
            return
        if not heal.majority:  # the leader's records do not give its digest: it lied, or served a subset
            self._misled_by[heal.source] = self.now + self.cfg.ban_seconds
            self._heal = None
            out.append(Log("healed", {"step": heal.step, "how": "the leader's records missed its digest", "ok": False}))
            return
        heal.stage = "checkpoint"
        self._busy += 1
        out.append(FetchCheckpoint(heal.step, heal.winner, heal.supporters, self.sealed))

    def _checkpoint_installed(self, event: CheckpointInstalled, out: list) -> None:
        self._busy = max(0, self._busy - 1)
        heal = self._heal
        if heal is not None and heal.stage == "checkpoint":
            if event.ok:
                self.digests[heal.step] = heal.winner
                self._healed("checkpoint", out)
            else:
                out.append(Log("healed", {"step": heal.step, "how": "failed", "ok": False}))
                self._heal = None
            return
        if self.phase == "join_checkpoint":
            if event.ok:
                self.sealed = self.horizon = self.floor = event.step
                self.digests[event.step] = self._join_digest
                self.ledger = Ledger(self.ledger.ordered(event.step))
                out.append(Log("checkpoint_installed", {"step": event.step}))
            else:
                out.append(Log("checkpoint_failed", {"step": event.step}))
            self.phase = "sync"

    def _healed(self, how: str, out: list) -> None:
        heal = self._heal
        self._heal = None
        self.revision += 1
        out.append(Log("healed", {"step": heal.step, "how": how, "ok": True}))
        self._cast(heal.step, out)
        for step in sorted(self._voted):  # our other votes speak for weights we just replaced
            mine = self.votes.of(step).get(self.me)
            if step != heal.step and mine is not None and self.digests.get(step, mine.digest) != mine.digest:
                self._cast(step, out)

    # ===================================================================================== join
    def weight(self, machine: bytes) -> int:
        """What a machine's word (votes, status) weighs here: its standing, capped so that every
        established member counts alike (after a partition, each side has applied only its own
        side's records: uncapped, each side would trust itself), and nothing for a machine
        caught equivocating (local policy: its records of other steps still count)."""
        if machine in self.equivocators:
            return 0
        return min(self.standing(machine), self.cfg.standing_cap)

    @property
    def _established(self) -> int:
        """The weight from which a voter counts as an established member (see trust.tally)."""
        return max(1, self.cfg.standing_cap // 2)

    def _frontier(self) -> int:
        """Where the swarm is: the lower median of our neighbours' sealed steps (only those
        with standing, when we know any), so liars in a minority cannot move it."""
        key = (self._statuses_seen, self.gossip.links_version, self.standing.version, len(self.equivocators),
               self.horizon)
        if self._frontier_cache[0] != key:
            self._frontier_cache = (key, self._compute_frontier())
        return self._frontier_cache[1]

    def _compute_frontier(self) -> int:
        statuses = [(p, link.status) for p, link in self.gossip.links.items() if link.status is not None]
        trusted = [st.sealed for p, st in statuses if self.weight(p) > 0]
        values = sorted(trusted or [st.sealed for _, st in statuses])
        return values[(len(values) - 1) // 2] if values else self.horizon

    def _start(self, out: list) -> None:
        """Decide how to enter the swarm once discovery and neighbours have said where it is."""
        heard = sum(1 for link in self.gossip.links.values() if link.status is not None)
        waited = self.now - self.started
        if not self._discovered and waited < self.cfg.start_timeout:
            return
        if self.cfg.needs_peers and heard == 0:
            if waited >= self.cfg.start_timeout:
                self.phase = "done"
                out.append(Fail(f"{self.cfg.needs_peers}; no peer answered within {self.cfg.start_timeout:.0f} s"))
            return
        if not self.known and not self.gossip.links:
            self.phase = "barrier"  # the first peer of a swarm
            return
        if heard == 0 and waited < 3 * self.cfg.start_timeout:
            # members are known but none has said where the swarm is yet (a loaded host, slow
            # links): entering now would take step 0 for the swarm's place, and a checkpoint
            # joiner would catch up by records from step 0 instead
            return
        if heard < min(3, len(self.known)) and waited < self.cfg.start_timeout:
            if self.now - (self._first_status or self.now) < self.cfg.settle:  # heard > 0 here
                return  # links are coming up: one neighbour's word is not enough to act on
        self._enter(heard, out)

    def _enter(self, heard: int, out: list) -> None:
        frontier = self._frontier()
        if frontier <= self.horizon + 1:
            self.phase = "barrier" if self.horizon == 0 else "train"
            if self.horizon:
                self._first_own = self.horizon + self.spec.delay
            return
        out.append(Log("joining", {"frontier": frontier, "sealed": self.sealed, "by": self.cfg.join_by, "peers": heard}))
        if self.cfg.join_by == "checkpoint" and self.sealed == 0:
            self._begin_checkpoint_join(frontier, out)
        else:
            self.phase = "sync"

    def _begin_checkpoint_join(self, frontier: int, out: list) -> None:
        """Learn who has standing from the last steps as a majority of neighbours report them
        (one liar cannot invent standing for its Sybils), then fetch the checkpoint that
        those peers' votes vouch for."""
        self.phase = "join_standing"
        self._standing_done = []
        first = max(0, frontier - self.cfg.standing_window)
        sources = sorted(p for p, link in self.gossip.links.items() if link.status and link.status.sealed >= frontier)
        self.rng.shuffle(sources)
        self._join_deadline = self.now + self.cfg.range_timeout
        self._standing_ranges = [self._ask_range(p, first, frontier, "standing", out) for p in sources[:3]]
        if not self._standing_ranges:
            self.phase = "sync"

    def _maybe_join_by_checkpoint(self, out: list) -> None:
        if self.phase != "join_standing" or (self._standing_ranges and self.now < self._join_deadline):
            return
        replies, self._standing_ranges = self._standing_done, []
        need = len(replies) // 2 + 1
        seen: Counter[tuple[int, bytes, bytes]] = Counter()
        for reply in replies:
            seen.update({(r.step, r.machine, r.rid) for r in reply.records})
        history: dict[int, list[bytes]] = {}
        for (step, machine, _), n in seen.items():
            if n >= need:
                history.setdefault(step, []).append(machine)
        self.standing.reset([(s, tuple(ms)) for s, ms in history.items()])
        for step in sorted({v.step for v in self.votes.recent(0)}, reverse=True):
            if step % self.cfg.checkpoint_every:
                continue
            tally = self.votes.tally(step, self.weight, established=self._established)
            if tally.winner is not None and tally.supporters:
                self.phase = "join_checkpoint"
                self._join_digest = tally.winner
                self._busy += 1
                out.append(FetchCheckpoint(step, tally.winner, tally.supporters, step))
                out.append(Log("join_checkpoint", {"step": step, "digest": tally.winner.hex(), "weight": tally.weight,
                                                   "total": tally.total}))
                return
        out.append(Log("join_replay", {"reason": "no checkpoint that peers with standing vouch for"}))
        self.phase = "sync"

    def _sync(self, out: list) -> None:
        """Catch up: fetch and seal the steps the swarm has sealed and we have not."""
        frontier = min(self._frontier(), self.cfg.target)
        if self.horizon >= frontier:
            # joined once the replica has applied what it fetched, not when the seals are
            # issued: a record computed behind dozens of queued catch-up seals would come out
            # many steps late (the swarm goes on meanwhile; the next call fetches that too)
            if self._range is None and not self._busy and self.sealed >= self.horizon:
                self.phase = "barrier" if self.horizon == 0 else "train"
                self._first_own = self.horizon + self.spec.delay
                out.append(Log("joined", {"step": self.horizon}))
            return
        if self._range is not None or self._busy:
            return
        sources = [p for p, link in self.gossip.links.items() if link.status and link.status.sealed > self.horizon]
        if sources:
            sources.sort(key=lambda p: (-self.standing(p), -self.gossip.links[p].status.sealed, p))
            self._range = self._ask_range(sources[0], self.horizon, frontier, "catchup", out)

    @property
    def isolated(self) -> bool:
        """Training but waiting: no other peer takes part (see _enough_peers)."""
        return not self._enough and self.phase == "train"

    def _enough_peers(self, out: list) -> bool:
        """A peer never trains alone while it believes it is in a swarm. With ``min_peers`` > 1
        it seals steps only while another peer takes part, counting the authors of records of
        the last sealed step up to the next ones, and the neighbours with standing that say
        they train (at step 0: those it started with). And whatever ``min_peers``, a peer that
        lost every link while others were training with it a moment ago (authors of those
        steps that did not say goodbye) waits for them to be re-dialed instead of sealing
        steps they are still writing records for; with ``min_peers`` 1 it goes on alone after
        ``alone_after`` seconds (they may have crashed). Below that it says so once and waits
        (records that arrive meanwhile are kept); a neighbour catching up counts again as
        soon as it trains."""
        def authors(step: int) -> set[bytes]:
            return self.ledger.authors(step) - self.departed.keys() - {self.me}

        def recent() -> set[bytes]:  # authors of the last sealed step up to the next ones
            return set().union(*(authors(s) for s in range(max(0, self.horizon - 1), self.horizon + self.spec.delay + 2)))

        # cut off: no link left, and others wrote records over the late window (older ones no
        # longer count anyway); only looked at while linkless: this runs on every event
        cut_off = not self.gossip.links and any(
            authors(s) for s in range(max(0, self.horizon - max(1, self.spec.late_window)), self.horizon + self.spec.delay + 2))
        if cut_off and self._cut_since is None:
            self._cut_since = self.now
        elif not cut_off:
            self._cut_since = None
        if self.cfg.min_peers <= 1 and cut_off and self.now - self._cut_since >= self.cfg.alone_after:
            cut_off = False
        # a status is a claim anyone can make: only neighbours with standing count by it
        def takes_part(p: bytes, link) -> bool:
            return (link.status is not None and (link.status.training or self.horizon == 0)
                    and (self.horizon == 0 or self.standing(p) > 0) and p not in self.departed)

        def taking_part() -> set[bytes]:  # (O(N) in the record authors: only for the decision or a log line)
            return {p for p, link in self.gossip.links.items() if takes_part(p, link)} | recent() | {self.me}

        need = min(self.cfg.min_peers, 2)
        others = need <= 1 or any(takes_part(p, link) for p, link in self.gossip.links.items()) or bool(recent())
        enough = others and not cut_off
        if enough != self._enough:
            self._enough = enough
            if enough:
                out.append(Log("resumed", {"step": self.horizon, "peers": len(taking_part())}))
            else:
                reason = ("lost every link to the peers training with it; waiting for them (re-dialing)" if cut_off
                          else "no other peer takes part; waiting for them")
                out.append(Log("isolated", {"step": self.horizon, "peers": len(taking_part()), "need": need,
                                            "neighbours": len(self.gossip.links), "reason": reason}))
        if not enough and self.round is not None and self.round.step == self.horizon:
            self.round.started = self.now  # the round's wait starts when peers are back
            self.round.first_seen = None
        return enough

    def _barrier(self, out: list) -> None:
        """A fresh swarm starts when min_peers peers are linked; a swarm already under way is
        joined where it is."""
        statuses = [link.status for link in self.gossip.links.values() if link.status is not None]
        if any(st.sealed > self.horizon + 1 for st in statuses):
            self._enter(len(statuses), out)
            if self.phase != "barrier":
                return
        started = any(st.training or st.sealed > 0 for st in statuses)
        # a bounded-degree overlay links to at most 1 + max_links of min_peers: the others count
        # once we know of them (DHT, peer exchange)
        linked_enough = 1 + len(statuses) >= min(self.cfg.min_peers, 1 + self.cfg.max_links)
        known_enough = 1 + len(self.known.keys() - self.departed.keys()) >= self.cfg.min_peers
        if (linked_enough and known_enough) or started:
            self.phase = "train"
            out.extend(Send(peer, self._status()) for peer in self.gossip.links)

    # ==================================================================================== finish
    def _finish(self, out: list) -> None:
        target = self.cfg.target
        if self.phase == "train" and self.sealed >= target and self.horizon >= target and not self._busy:
            self.phase = "finish"
            self._final_at = self.now + self._round_wait() + self.cfg.vote_grace
            out.extend(Send(peer, self._status()) for peer in self.gossip.links)
        if (self.phase != "finish" or self._busy or self._heal is not None or self._range is not None
                or self._to_cast or self._tallies):
            return  # (the last digest steps' votes first: a heal there changes the final digest)
        if self._final_voted_at is None:
            if self.now < self._final_at:
                return
            self._flush_late(out, force=True)
            if self._busy:
                return
            self._cast(target, out)
            self._final_voted_at = self.now
            return
        waiting = [p for p in self.gossip.links if self.weight(p) > 0 and p not in self.votes.of(target)]
        if waiting and self.now - self._final_voted_at < self.cfg.finish_timeout:
            return
        mine = self.digests.get(target)
        tally = self.votes.tally(target, self.weight, mine, self.me, self._established)
        lead = tally.leader if tally.split else tally.winner
        if lead is not None and lead != mine and self._final_heals < 3:
            self._final_heals += 1
            self._act_on(tally, out)
            if self._heal is not None:
                return
        disagree = any(v.digest != mine for p, v in self.votes.of(target).items() if p != self.me and self.weight(p) > 0)
        if disagree and self.now - self._final_voted_at < self.cfg.finish_timeout:
            return  # a neighbour may still heal towards us (each side may weigh the other differently)
        if tally.split:
            out.append(Log("split", {"step": target, "leading_weight": tally.weight, "total": tally.total}))
        self.phase = "done"
        out.append(Finished(self.summary()))

    def summary(self) -> dict:
        return {"step": self.sealed, "phase": self.phase, "heals": self.heals, "late_records": self.late_applied,
                "records_applied": self.records_applied, "rejected": sum(self.reasons.values()),
                "rejected_reasons": dict(self.reasons),
                "rejected_from": {p.hex(): n for p, n in self.rejects_from.most_common(16)},
                "rejected_of": {p.hex(): n for p, n in self.rejects_of.most_common(16)},
                "digest": self.digests[self.sealed].hex() if self.sealed in self.digests else None,
                "links": len(self.gossip.links), "revision": self.revision}

    # ================================================================================== advance
    def _advance(self, out: list) -> None:
        """Whatever the new state allows: timers, phase changes, sealing, flushing queues."""
        now = self.now
        self._maintain_links(out)
        if self._range is not None and now > self._range.deadline:
            stale, self._range = self._range, None
            out.append(Log("range_timeout", {"peer": stale.peer.hex(), "first": stale.first, "last": stale.last}))
            if stale.purpose == "heal" and self._heal is not None:
                self._heal.timeouts += 1
                if self._heal.timeouts % 2:  # one more try (a link may have broken under the reply)
                    self._heal_fetch(out)
                else:
                    self._heal_next_supporter(stale.peer, out)
        self._standing_ranges = [r for r in self._standing_ranges if now <= r.deadline and r.peer in self.gossip.links]
        if self.phase == "join_standing":
            self._maybe_join_by_checkpoint(out)
        if self.phase == "start":
            self._start(out)
        if self.phase == "sync":
            self._sync(out)
        if self.phase == "barrier":
            self._barrier(out)
        if self._ahead:
            self._release_ahead(out)
        if self.phase == "train":
            frontier = self._frontier()
            if frontier > self.horizon + 1 + self.spec.delay and not self._busy:
                out.append(Log("behind", {"sealed": self.horizon, "frontier": frontier}))
                self.phase = "sync"
                self._sync(out)
            elif self._enough_peers(out):
                self._try_seal(out)
        self._flush_late(out)
        self._cast_due(out)
        heal = self._heal
        if heal is not None and heal.stage == "wait_link":
            if any(p in self.gossip.links for p in heal.supporters):
                self._heal_fetch(out)
            elif now - heal.started > self.cfg.range_timeout:
                out.append(Log("healed", {"step": heal.step, "how": "unreachable", "ok": False}))
                self._heal = None
        self._tally_due(out)
        self._finish(out)
        self.gossip.urgent_step = self.horizon
        out.extend(Send(p, m) for p, m in self.gossip.flush(now))
        if now >= self._next_status or self._publishing() != self._said_publishing:
            self._said_publishing = self._publishing()  # neighbours learn at once when to expect us
            self._next_status = now + self.cfg.status_interval
            status = self._status()
            out.extend(Send(p, status) for p in self.gossip.links)
        if self.gossip.links and (now >= self._next_peers or (self._links_changed and now >= self._peers_sent + 2.0)):
            self._next_peers = now + self.cfg.peers_interval
            self._peers_sent, self._links_changed = now, False
            out.extend(Send(p, self._peers_message(p)) for p in self.gossip.links)
