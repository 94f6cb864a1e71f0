"""A deterministic in-process simulator: many swarm cores over a simulated network.

Every peer runs the real ``SwarmCore`` (peer/core): the simulator only plays the roles of
the outside world, the way peer/node.py does for a real peer:

- the network: links with a one-way latency drawn per pair from a heavy-tailed internet-like
  distribution (``NetConfig.latency``), independent loss per message, partitions, and
  crashes; messages are the protocol's own message objects, and their bytes are counted by
  encoding them (``protocol.messages.encode_message``);
- the replica: a stand-in ``ChainReplica`` whose "weights" are a hash chain over the record
  ids each step applies (ledger set semantics included), with a full ledger, checkpoints at
  every step, and a digest as the real replica would give, so identical replicas mean
  identical applied history;
- time: a virtual clock and one event queue; everything random comes from one seed, so a
  run is reproducible bit for bit.

Hostile peers run a core too (to stay linked and look normal) but tamper with what it sends:
see ``Behaviour``.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from ..protocol.admission import check_record, check_vote
from ..protocol.errors import ProtocolError
from ..protocol.identity import Signer, issue_member_ticket, solve_pow
from ..protocol.ledger import Ledger
from ..protocol.messages import Gossip, Message, RangeReply, Status, Vote, Votes, encoded_size
from ..protocol.records import Record
from ..protocol.spec import SwarmSpec
from .core import CoreConfig, SwarmCore, checkpoints_to_keep
from .core.events import (CheckpointInstalled, Compute, Connect, Disconnect, FetchCheckpoint, Finished, LinkDown, LinkUp,
                          Log, Malformed, PeersFound, Rebuild, Rebuilt, Received, RecordReady, Seal, Send, ServeRange,
                          StepSealed, Stop, Tick)


# --- the world ---------------------------------------------------------------------------------
@dataclass
class NetConfig:
    latency_min: float = 0.02       # one-way latency of a pair: min + a log-normal tail, capped
    latency_median: float = 0.08
    latency_max: float = 0.3
    loss: float = 0.0               # probability that one message is lost
    tick: float = 0.25              # how often each core gets a Tick (every event advances it too)


def draw_latency(rng: random.Random, net: NetConfig) -> float:
    """A pair's one-way latency: log-normal around the median, clipped to [min, max]."""
    x = rng.lognormvariate(math.log(net.latency_median), 0.6)
    return min(max(x, net.latency_min), net.latency_max)


class ChainReplica:
    """The stand-in for model/replica.py + the ledger file (peer/history.py): weights are a
    hash chain, and it keeps what History keeps.

    ``state[s]`` is the "weights" after s sealed steps: SHA-256(state[s-1] || rids of the
    records applied at step s-1, in canonical order); a digest is the state itself. Like
    History, our own record is in the ledger from the moment it is computed (so a record
    computed after the swarm sealed its step without it is there until the seal drops it),
    a heal without a majority is undone if it misses the digest it expects, and checkpoints
    exist only every ``checkpoint_every`` steps (the newest ``keep`` of them, and the one we
    started from; ``checkpoints_to_keep`` says how many)."""

    def __init__(self, base: bytes, checkpoint_every: int = 20, keep: int = 3) -> None:
        self.ledger = Ledger()
        self.states = [base]
        self.offset = 0  # the first state we hold (a checkpoint joiner starts later)
        self.checkpoint_every, self.keep = checkpoint_every, keep

    @property
    def sealed(self) -> int:
        return self.offset + len(self.states) - 1

    def state(self, step: int) -> bytes | None:
        i = step - self.offset
        return self.states[i] if 0 <= i < len(self.states) else None

    def checkpoint(self, step: int) -> bytes | None:
        """The weights of a checkpoint this replica still keeps (what it can serve)."""
        kept = [s for s in range(self.offset, self.sealed + 1) if s % self.checkpoint_every == 0][-self.keep:]
        return self.state(step) if step in kept or step == self.offset else None

    def _next(self, prev: bytes, step: int) -> bytes:
        h = hashlib.sha256(prev)
        for r in self.ledger.applicable(step):
            h.update(r.rid)
        return h.digest()

    def compute(self, record: Record) -> None:
        self.ledger.add(record)  # History.compute: on disk before it is sent

    def seal(self, step: int, records) -> bytes:
        for r in records:
            self.ledger.add(r)
        sealed = {r.rid for r in records}
        if any(r.rid not in sealed for r in self.ledger.at(step)):
            self.ledger = Ledger([r for r in self.ledger.ordered() if r.step != step or r.rid in sealed])
        if step != self.sealed:
            raise RuntimeError(f"sealing step {step} at {self.sealed} sealed steps")
        self.states.append(self._next(self.states[-1], step))
        return self.states[-1]

    def rebuild(self, first: int, records, replace: bool, last: int, expect: tuple[int, bytes] | None = None) -> bool:
        """Returns whether a substitution was kept (see History.rebuild)."""
        top = self.sealed
        previous = self.ledger
        if replace:
            kept = [r for r in self.ledger.ordered() if not first <= r.step < last]
            self.ledger = Ledger(kept + list(records))
        else:
            for r in records:
                self.ledger.add(r)
        saved = list(self.states)
        self._replay(first, top)
        if replace and expect is not None and self.state(expect[0]) != expect[1]:
            self.ledger, self.states = previous, saved
            return False
        return True

    def _replay(self, first: int, top: int) -> None:
        start = max(first, self.offset)
        del self.states[start - self.offset + 1:]
        for step in range(start, top):
            self.states.append(self._next(self.states[-1], step))

    def install(self, step: int, state: bytes) -> None:
        self.states = [state]
        self.offset = step
        self.ledger = Ledger(self.ledger.ordered(step))


@dataclass
class Behaviour:
    """What a peer does besides following the protocol (hostile peers; honest: all off)."""

    wrong_sign: bool = False        # its records carry the maximum byte with a random sign
    equivocate: bool = False        # a second, different record of each step to half its neighbours
    far_future: bool = False        # records stamped far ahead, and statuses claiming 10^9 sealed steps
    late_spam: bool = False         # re-signed records of old steps every step
    junk: bool = False              # malformed frames
    fake_votes: bool = False        # votes for digests of its choice at every digest step
    fake_checkpoint: bool = False   # serves a checkpoint that is not what it claims
    outsider: bool = False          # has no valid admission ticket (members-only or proof-of-work swarms)

    @property
    def hostile(self) -> bool:
        return any(vars(self).values())


HOSTILE_MIX = [Behaviour(wrong_sign=True), Behaviour(equivocate=True), Behaviour(far_future=True),
               Behaviour(late_spam=True), Behaviour(junk=True), Behaviour(fake_votes=True, fake_checkpoint=True)]


@dataclass
class SimPeer:
    name: str
    signer: Signer
    core: SwarmCore
    replica: ChainReplica
    behaviour: Behaviour
    compute_time: float
    alive: bool = True
    joined_at: float = 0.0
    left_at: float | None = None
    finished: bool = False
    finished_at: float | None = None
    summary: dict | None = None
    busy_until: float = 0.0           # the stand-in tensor worker: one job at a time
    record_ready_at: dict[int, float] = field(default_factory=dict)
    seal_latency: list[tuple[int, float]] = field(default_factory=list)  # (step, seconds from our record to the seal)
    sent_msgs: int = 0
    sent_bytes: int = 0
    logs: list[tuple[float, str, dict]] = field(default_factory=list)


class Simulation:
    """N cores, one network, one clock. ``run(until)`` advances the world."""

    def __init__(self, spec: SwarmSpec, seed: int = 0, net: NetConfig | None = None,
                 core_config: Callable[[], CoreConfig] | None = None, authority: Signer | None = None) -> None:
        self.spec = spec
        self.net = net or NetConfig()
        self.rng = random.Random(seed)
        self.seed = seed
        self.core_config = core_config or CoreConfig
        self.now = 0.0
        self._queue: list = []
        self._seq = 0
        self.peers: dict[bytes, SimPeer] = {}
        self.links: set[tuple[bytes, bytes]] = set()
        self.partition: dict[bytes, int] | None = None
        self._latency: dict[tuple[bytes, bytes], float] = {}
        self._verified: dict[bytes, bool] = {}
        self._vote_ok: dict[bytes, bool] = {}
        self._msg_bytes: dict[int, int] = {}
        self.authority = authority  # a members-only swarm's authority, which issues the tickets
        self.base = hashlib.sha256(b"base weights" + spec.swarm_id).digest()
        self.rendezvous: list[bytes] = []   # the DHT's member entries (bounded sample served)
        self.joins = 0
        self.leaves = 0
        self.traffic: Counter = Counter()       # simulated second -> messages honest peers sent ...
        self.traffic_bytes: Counter = Counter()  # ... and their bytes, frame headers included
        self.seal_times: dict[int, list[float]] = {}  # step -> when each replica sealed it

    # --- shared verification (the real peer checks each record once too) -------------------------
    def _check(self, spec: SwarmSpec, record: Record) -> Record:
        key = record.rid + record.signature
        ok = self._verified.get(key)
        if ok is None:
            try:
                check_record(spec, record)
                ok = True
            except ProtocolError:
                ok = False
            self._verified[key] = ok
        if not ok:
            raise ProtocolError("bad signature or ticket")
        return record

    def _check_vote(self, spec: SwarmSpec, vote: Vote) -> Vote:
        key = vote.body + vote.signature
        ok = self._vote_ok.get(key)
        if ok is None:
            try:
                check_vote(spec, vote)
                ok = True
            except ProtocolError:
                ok = False
            self._vote_ok[key] = ok
        if not ok:
            raise ProtocolError("bad vote")
        return vote

    # --- scheduling ------------------------------------------------------------------------------
    def at(self, when: float, fn, *args) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, fn, args))

    def run(self, until: float, stop: Callable[[], bool] | None = None, check_every: float = 0.5) -> None:
        """Advance the world to ``until`` (simulated seconds), or until ``stop()`` holds (asked
        every ``check_every`` simulated seconds)."""
        next_check = self.now + check_every
        while self._queue and self._queue[0][0] <= until:
            when, _, fn, args = heapq.heappop(self._queue)
            self.now = when
            fn(*args)
            if stop is not None and when >= next_check:
                if stop():
                    return
                next_check = when + check_every
        self.now = max(self.now, until)

    # --- peers -----------------------------------------------------------------------------------
    def add_peer(self, name: str, behaviour: Behaviour | None = None, compute_time: float = 1.0,
                 join_by: str = "checkpoint", target: int = 20, min_peers: int = 1, bootstrap: int = 8) -> SimPeer:
        signer = Signer(hashlib.sha256(f"{self.seed}/{name}".encode()).digest())
        cfg = self.core_config()
        cfg.target, cfg.join_by, cfg.min_peers = target, join_by, min_peers
        core = SwarmCore(self.spec, signer, cfg, ticket=self._ticket(signer, behaviour or Behaviour()),
                         verify=self._check, verify_vote=self._check_vote, seed=self.rng.getrandbits(64),
                         digests={0: self.base})
        peer = SimPeer(name, signer, core, ChainReplica(self.base, cfg.checkpoint_every,
                                                      checkpoints_to_keep(self.spec.late_window, cfg.checkpoint_every)), behaviour or Behaviour(), compute_time,
                       joined_at=self.now)
        self.peers[signer.machine] = peer
        found = self.rng.sample(self.rendezvous, min(bootstrap, len(self.rendezvous)))
        self.rendezvous.append(signer.machine)
        self.at(self.now, self._feed, signer.machine, PeersFound(tuple(found)))
        self.at(self.now + self.rng.random() * self.net.tick, self._tick, signer.machine)
        return peer

    def _ticket(self, signer: Signer, behaviour: Behaviour) -> bytes:
        a = self.spec.admission
        if a.mode == "members":
            return bytes(64) if behaviour.outsider else issue_member_ticket(self.authority, self.spec.swarm_id, signer.machine)
        if a.pow_bits:
            return bytes(8) if behaviour.outsider else solve_pow(self.spec.swarm_id, signer.machine, a.pow_bits)
        return b""

    def remove_peer(self, machine: bytes, graceful: bool) -> None:
        peer = self.peers[machine]
        if not peer.alive:
            return
        if graceful:
            self._feed(machine, Stop())
        peer.alive = False
        peer.left_at = self.now
        if machine in self.rendezvous:
            self.rendezvous.remove(machine)
        for a, b in sorted(l for l in self.links if machine in l):  # (sorted: set order varies per process)
            self.links.discard((a, b))
            other = b if a == machine else a
            self.at(self.now + self._lat(a, b), self._feed, other, LinkDown(machine))

    def _lat(self, a: bytes, b: bytes) -> float:
        key = (a, b) if a < b else (b, a)
        if key not in self._latency:
            self._latency[key] = draw_latency(self.rng, self.net)
        return self._latency[key]

    def _reachable(self, a: bytes, b: bytes) -> bool:
        return self.partition is None or self.partition.get(a, 0) == self.partition.get(b, 0)

    def _tick(self, machine: bytes) -> None:
        peer = self.peers[machine]
        if not peer.alive:
            return
        self._feed(machine, Tick())
        self.at(self.now + self.net.tick, self._tick, machine)

    # --- the driver: feed a core, carry out its actions -----------------------------------------
    def _feed(self, machine: bytes, event) -> None:
        peer = self.peers[machine]
        if not peer.alive:
            return
        for action in peer.core.feed(event, self.now):
            self._act(peer, action)

    def _act(self, peer: SimPeer, action) -> None:
        me = peer.signer.machine
        if isinstance(action, Send):
            self._send(peer, action.peer, self._tamper(peer, action.peer, action.message))
        elif isinstance(action, Connect):
            other = self.peers.get(action.peer)
            if other is not None and other.alive and self._reachable(me, action.peer):
                lat = self._lat(me, action.peer)
                self.links.add((me, action.peer) if me < action.peer else (action.peer, me))
                self.at(self.now + 2 * lat, self._feed, me, LinkUp(action.peer))
                self.at(self.now + lat, self._feed, action.peer, LinkUp(me))
        elif isinstance(action, Disconnect):
            key = (me, action.peer) if me < action.peer else (action.peer, me)
            if key in self.links:
                self.links.discard(key)
                self.at(self.now + self._lat(me, action.peer), self._feed, action.peer, LinkDown(me))
        elif isinstance(action, Compute):
            start = max(self.now, peer.busy_until)
            took = peer.compute_time * (0.9 + 0.2 * self.rng.random())
            peer.busy_until = start + took
            self.at(peer.busy_until, self._computed, me, action.step, took)
        elif isinstance(action, Seal):
            start = max(self.now, peer.busy_until)
            peer.busy_until = start + 0.001 * (1 + len(action.records))
            self.at(peer.busy_until, self._sealed, me, action.step, action.records)
        elif isinstance(action, Rebuild):
            start = max(self.now, peer.busy_until)
            peer.busy_until = start + 0.05
            self.at(peer.busy_until, self._rebuilt, me, action)
        elif isinstance(action, FetchCheckpoint):
            self.at(self.now + 0.5, self._fetch_checkpoint, me, action)
        elif isinstance(action, ServeRange):
            records = peer.replica.ledger.ordered(action.first, action.last)
            for i in range(0, max(len(records), 1), 256):
                chunk = tuple(records[i:i + 256])
                self._send(peer, action.peer, RangeReply(action.first, action.last, i + 256 < len(records), chunk))
        elif isinstance(action, Log):
            peer.logs.append((self.now, action.event, action.fields))
        elif isinstance(action, Finished):
            peer.finished, peer.finished_at, peer.summary = True, self.now, action.summary

    def _send(self, peer: SimPeer, dst: bytes, message: Message | bytes) -> None:
        me = peer.signer.machine
        key = (me, dst) if me < dst else (dst, me)
        if key not in self.links or not self._reachable(me, dst):
            return
        size = self._size(message)
        peer.sent_msgs += 1
        peer.sent_bytes += size
        if not peer.behaviour.hostile:
            second = int(self.now)
            self.traffic[second] += 1
            self.traffic_bytes[second] += size
        if self.rng.random() < self.net.loss:
            return
        if isinstance(message, bytes):  # a malformed frame
            self.at(self.now + self._lat(me, dst), self._feed, dst, Malformed(me, "junk"))
            return
        self.at(self.now + self._lat(me, dst), self._deliver, me, dst, message, size)

    def _deliver(self, src: bytes, dst: bytes, message, size: int) -> None:
        peer = self.peers.get(dst)
        if peer is None or not peer.alive:
            return
        key = (src, dst) if src < dst else (dst, src)
        if key not in self.links:
            return
        self._feed(dst, Received(src, message))

    def _size(self, message) -> int:
        if isinstance(message, bytes):
            return len(message) + 8
        return encoded_size(message) + 8  # + the 8-byte frame length

    def _computed(self, machine: bytes, step: int, took: float) -> None:
        peer = self.peers[machine]
        if not peer.alive:
            return
        b = peer.behaviour
        n = self.spec.samples_per_step
        if b.wrong_sign:
            grads = bytes(self.rng.choice((0x7F, 0x81)) for _ in range(n))
        else:
            grads = bytes(self.rng.choice([q & 0xFF for q in range(-20, 21)]) for _ in range(n))
        record = Record.create(peer.signer, self.spec.swarm_id, step, 10, grads, peer.core.ticket)
        peer.replica.compute(record)
        peer.record_ready_at[step] = self.now
        self._feed(machine, RecordReady(record, took))

    def _sealed(self, machine: bytes, step: int, records) -> None:
        peer = self.peers[machine]
        if not peer.alive:
            return
        state = peer.replica.seal(step, records)
        self.seal_times.setdefault(step, []).append(self.now)
        if step in peer.record_ready_at:
            peer.seal_latency.append((step, self.now - peer.record_ready_at.pop(step)))
        digest = state if (step + 1) % self.spec.digest_every == 0 or step + 1 == peer.core.cfg.target else None
        self._feed(machine, StepSealed(step, digest))

    def _rebuilt(self, machine: bytes, action: Rebuild) -> None:
        peer = self.peers[machine]
        if not peer.alive:
            return
        replica = peer.replica
        kept = replica.rebuild(action.first, action.records, action.replace, action.last, action.expect)
        every = self.spec.digest_every
        digests = {s: replica.state(s) for s in range(max(action.first, replica.offset), replica.sealed + 1)
                   if s % every == 0 or s == peer.core.cfg.target}
        self._feed(machine, Rebuilt(replica.sealed, {s: d for s, d in digests.items() if d is not None}, kept=kept))

    def _fetch_checkpoint(self, machine: bytes, action: FetchCheckpoint) -> None:
        peer = self.peers[machine]
        if not peer.alive:
            return
        for source in action.peers:
            other = self.peers.get(source)
            if other is None or not other.alive or not self._reachable(machine, source):
                continue
            state = other.replica.checkpoint(action.step)
            if other.behaviour.fake_checkpoint:
                state = hashlib.sha256(b"fake" + (state or b"")).digest()
            if state is None or state != action.digest:
                continue  # the digest check a real peer makes after the download
            replica = peer.replica
            replica.install(action.step, state)
            for step in range(action.step, action.replay_to):  # replay what our ledger holds
                replica.states.append(replica._next(replica.states[-1], step))
            self._feed(machine, CheckpointInstalled(replica.sealed, True))
            return
        self._feed(machine, CheckpointInstalled(action.step, False))

    # --- hostile behaviour ------------------------------------------------------------------------
    def _tamper(self, peer: SimPeer, dst: bytes, message: Message) -> Message | bytes:
        b = peer.behaviour
        if not b.hostile:
            return message
        rng = self.rng
        if b.junk and rng.random() < 0.5:
            return bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 64)))
        if b.far_future and isinstance(message, Status):
            return Status(10**9, message.flags, 0, message.step_time_ms)
        if isinstance(message, Gossip):
            own = [r for r in message.records if r.machine == peer.signer.machine]
            extra = []
            for r in own:
                if b.equivocate and dst[-1] % 2:
                    extra.append(Record.create(peer.signer, self.spec.swarm_id, r.step, r.scale_exp,
                                               bytes((g + 1) % 0x7F for g in r.grads), r.ticket))
                if b.far_future:
                    extra.append(Record.create(peer.signer, self.spec.swarm_id, r.step + 1000, 0, r.grads, r.ticket))
                if b.late_spam:
                    for back in range(1, 4):
                        if r.step >= back:
                            extra.append(Record.create(peer.signer, self.spec.swarm_id, r.step - back, r.scale_exp,
                                                       bytes([rng.randrange(1, 127)]) * len(r.grads), r.ticket))
            if extra:
                if b.equivocate:
                    keep = [r for r in message.records if r.machine != peer.signer.machine]
                    return Gossip(tuple(keep + extra), message.have, message.want)
                return Gossip(message.records + tuple(extra), message.have, message.want)
        if b.fake_votes and isinstance(message, Votes):
            fake = [Vote.create(peer.signer, self.spec.swarm_id, v.step, hashlib.sha256(v.digest).digest(), 0,
                                peer.core.ticket) for v in message.votes if v.machine == peer.signer.machine]
            if fake:
                return Votes(tuple(fake))
        return message

    # --- measurements -----------------------------------------------------------------------------
    def honest(self, alive_only: bool = True) -> list[SimPeer]:
        return [p for p in self.peers.values() if not p.behaviour.hostile and (p.alive or not alive_only)]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# --- scenarios -------------------------------------------------------------------------------------
@dataclass
class Scenario:
    """One simulated run: who takes part, what the network does, what hostile peers do."""

    peers: int = 10
    steps: int = 20
    seed: int = 0
    loss: float = 0.0
    latency_median: float = 0.08
    compute: tuple[float, float] = (0.8, 1.2)   # seconds per step, drawn per peer
    hostile: list[Behaviour] = field(default_factory=list)
    churn_per_minute: float = 0.0              # fraction of peers that leave (and as many join) per minute
    partition: tuple[float, float, float] | None = None  # (start, end, fraction cut off), seconds
    min_peers: int = 0                         # 0: min(peers, 8)
    spec_overrides: dict = field(default_factory=dict)
    core_overrides: dict = field(default_factory=dict)
    timeout: float = 3600.0                    # simulated seconds


def default_spec(**overrides) -> SwarmSpec:
    from ..protocol.spec import ModelRef, TaskRef

    return SwarmSpec(**{"name": "sim", "model": ModelRef("stand-in"), "task": TaskRef("stand-in"), "digest_every": 5,
                        **overrides})


def run_scenario(sc: Scenario) -> tuple[Simulation, dict]:
    """Run a scenario to the end; returns the simulation and its measurements."""
    spec = default_spec(**sc.spec_overrides)

    def core_config() -> CoreConfig:
        cfg = CoreConfig()
        for k, v in sc.core_overrides.items():
            setattr(cfg, k, v)
        return cfg

    sim = Simulation(spec, seed=sc.seed, net=NetConfig(loss=sc.loss, latency_median=sc.latency_median),
                     core_config=core_config)
    rng = random.Random(sc.seed + 1)
    behaviours = list(sc.hostile) + [Behaviour()] * max(0, sc.peers - len(sc.hostile))
    rng.shuffle(behaviours)
    min_peers = sc.min_peers or min(sc.peers, 8)
    counter = iter(range(10 ** 9))

    def add(behaviour: Behaviour, join_by: str = "checkpoint", start: int = 1) -> SimPeer:
        return sim.add_peer(f"p{next(counter)}", behaviour, rng.uniform(*sc.compute), join_by, sc.steps, start)

    for b in behaviours:
        add(b, "checkpoint", min_peers)
    if sc.partition is not None:
        start, end, fraction = sc.partition

        def cut():
            members = sorted(sim.peers)
            rng.shuffle(members)
            sim.partition = {m: int(i < fraction * len(members)) for i, m in enumerate(members)}
            for a, b in sorted(sim.links):
                if not sim._reachable(a, b):
                    sim.links.discard((a, b))
                    sim.at(sim.now, sim._feed, a, LinkDown(b))
                    sim.at(sim.now, sim._feed, b, LinkDown(a))

        def heal():
            sim.partition = None

        sim.at(start, cut)
        sim.at(end, heal)
    if sc.churn_per_minute:
        owed = [0.0]  # peers due to leave, carried over (a small swarm churns less than one per round)

        def churn():
            live = [p for p in sim.peers.values() if p.alive and not p.finished]
            if len(live) < 3 or all(p.core.sealed >= sc.steps - 2 for p in live):
                return
            owed[0] += sc.churn_per_minute * len(live) / 6  # every 10 s, a sixth of the rate
            n, owed[0] = int(owed[0]), owed[0] - int(owed[0])
            for p in rng.sample(live, min(n, len(live) - 2)):
                sim.remove_peer(p.signer.machine, graceful=rng.random() < 0.5)
                sim.leaves += 1
            for _ in range(n):
                add(Behaviour(), "checkpoint" if sim.joins % 2 == 0 else "replay", 1)
                sim.joins += 1
            sim.at(sim.now + 10.0, churn)

        sim.at(10.0, churn)
    sim.run(sc.timeout, stop=lambda: all(p.finished or not p.alive for p in sim.honest()))
    return sim, measure(sim, sc)


def measure(sim: Simulation, sc: Scenario) -> dict:
    honest = [p for p in sim.honest() if p.finished]
    everyone = [p for p in sim.peers.values() if not p.behaviour.hostile]
    digests = Counter(p.replica.state(sc.steps) for p in honest)
    low = max((p.replica.offset for p in honest), default=0)

    def applied(p: SimPeer) -> set[bytes]:
        return {r.rid for s in range(low, min(sc.steps, p.replica.sealed)) for r in p.replica.ledger.applicable(s)}

    accepted = set().union(*map(applied, everyone)) if everyone else set()
    void = {r.rid for p in honest for s in range(low, sc.steps) for r in p.replica.ledger.at(s)
            if p.replica.ledger.equivocated(s, r.machine)}  # (an equivocation's records: refused by rule)
    lost = set()
    for p in honest:  # applied by some honest replica but missing from a finished honest one
        lost |= accepted - applied(p) - void
    active = everyone
    steps = max(1, sc.steps)
    record_bytes = statistics.fmean(
        sum(len(r.encode()) for r in p.replica.ledger.applicable(s)) for p in honest[:1] for s in range(sc.steps)
    ) if honest else 0.0
    # steady state: a new swarm's first steps wait on purpose for everyone's first records
    seal = [x for p in everyone for step, x in p.seal_latency if step >= 2]
    step_times = [p.compute_time for p in everyone]
    return {
        "peers": sc.peers,
        "honest_finished": len(honest),
        "replicas_identical": len(digests) == 1 and None not in digests,
        "distinct_digests": len(digests),
        "records_lost": len(lost),
        "msgs_per_peer_step": round(sum(p.sent_msgs for p in active) / (len(active) * steps), 2),
        "bytes_per_peer_step": round(sum(p.sent_bytes for p in active) / (len(active) * steps), 1),
        "record_bytes_per_step": round(record_bytes, 1),
        "seal_p50_s": round(percentile(seal, 0.5), 3),
        "seal_p99_s": round(percentile(seal, 0.99), 3),
        "slowest_step_s": round(max(step_times), 3),
        "joins": sim.joins,
        "leaves": sim.leaves,
        "simulated_s": round(sim.now, 1),
        "heals": sum(p.core.heals for p in everyone),
        "late_records": sum(p.core.late_applied for p in everyone),
        **steady_state(sim, sc, everyone),
    }


def steady_state(sim: Simulation, sc: Scenario, everyone: list[SimPeer], warm: int = 3) -> dict:
    """The same figures while the swarm trains, as a long run would see them: from the moment
    most replicas sealed step ``warm`` to the moment most sealed the last step. A short run's
    whole-run figures also carry its start (a new swarm waits for everyone's first records)
    and its end (peers wait up to finish_timeout for their neighbours' final votes, and late
    joiners catch up): at N = 1,000 and 10 steps that end was half of the simulated time."""
    last = sc.steps - 1
    if last - warm < 2 or warm not in sim.seal_times or last not in sim.seal_times:
        return {}
    start, end = (statistics.median(sim.seal_times[s]) for s in (warm, last))
    seconds = range(math.ceil(start), math.floor(end))
    if len(seconds) < 1:
        return {}
    middle = (seconds.start + seconds.stop) / 2
    live = sum(1 for p in everyone if p.joined_at <= middle and (p.left_at is None or p.left_at > middle))
    steps = (len(seconds) / (end - start)) * (last - warm)  # the steps the whole seconds cover
    seal = [x for p in everyone for step, x in p.seal_latency if warm < step <= last]
    return {
        "steady_steps": [warm, last],
        "steady_step_s": round((end - start) / (last - warm), 3),
        "steady_msgs_per_peer_step": round(sum(sim.traffic[t] for t in seconds) / (live * steps), 2),
        "steady_bytes_per_peer_step": round(sum(sim.traffic_bytes[t] for t in seconds) / (live * steps), 1),
        "steady_seal_p50_s": round(percentile(seal, 0.5), 3),
        "steady_seal_p99_s": round(percentile(seal, 0.99), 3),
    }
