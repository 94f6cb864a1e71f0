"""Dissemination over a bounded-degree overlay: which records go to which neighbour, when.

A record reaches every replica by flooding over *links* (long-lived streams to a bounded
number of neighbours), with the per-peer work per step independent of the swarm's size:

- **eager push**: a peer's own record goes whole to every neighbour at once; a record it
  learns from others goes whole to ``eager`` random neighbours that are not known to hold it
  and are not linked to its author (peer exchange tells each peer its neighbours'
  neighbours: those got the record from its author already);
- **lazy push**: every other neighbour that is not known to hold the record gets its 16-byte
  id in the ``have`` list of a frame: at once where it is the record's only way in, and as a
  *backup* (riding on the next frame that goes anyway, or after ``backup_delay``) where the
  neighbour is linked to the author; a neighbour that lacks it puts the id in the ``want`` list
  of its next frame, answered with the record; a want that is not answered in
  ``want_timeout`` goes to another neighbour that announced the same id;
- **batching**: everything for one neighbour (records, haves, wants) travels in one
  ``gossip`` frame, at most one frame per ``frame_interval`` per link; only what is on the
  critical path goes that fast (own records, answers to wants, wants, records of the step
  being collected); records of later steps (computed ahead: they have a round of slack) and
  announcements wait up to ``lazy_interval`` to batch, so frames per peer per step stay
  bounded by degree x round time / frame_interval whatever the swarm's size, and in practice
  are a few per link;
- **duplicate suppression**: per link, ids the neighbour sent us or we sent it are never
  sent to it again, and no record is sent to its own author; ids expire with their step.

A new link starts with the ids of the records of the steps still being collected (records
that spread before the link came up); anti-entropy for what was missed entirely (a
partition, a restart, a newcomer behind the swarm) is a range request (core.py), not a
per-record exchange. This module decides; it holds no sockets and
no clock of its own (times come in).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ...protocol.messages import MAX_BATCH, Gossip as GossipFrame
from ...protocol.records import Record


@dataclass
class Link:
    peer: bytes
    since: float
    last_heard: float
    known: set[bytes] = field(default_factory=set)                 # rids the neighbour holds
    records: dict[bytes, Record] = field(default_factory=dict)     # to push (ordered)
    have: dict[bytes, None] = field(default_factory=dict)          # to announce
    backup: dict[bytes, float] = field(default_factory=dict)       # to announce when a frame goes anyway
    neighbours: frozenset = frozenset()                            # its own links, as it last told us
    want: dict[bytes, None] = field(default_factory=dict)          # to ask for
    left: dict[bytes, int] = field(default_factory=dict)           # departures to pass on
    urgent: bool = False                                           # send as soon as the throttle allows
    last_frame: float = -1e9
    status: object | None = None                                   # its latest Status
    window_start: float = 0.0                                      # rate accounting (one-second windows)
    window_messages: int = 0


@dataclass
class _Wanted:
    peer: bytes
    deadline: float
    holders: list[bytes]


class Gossip:
    def __init__(self, rng: random.Random, eager: int, frame_interval: float, want_timeout: float,
                 backup_delay: float = 1.0, lazy_interval: float = 1.0, backups: bool = True) -> None:
        self.rng = rng
        self.eager = eager
        self.frame_interval = frame_interval
        self.lazy_interval = lazy_interval
        self.backups = backups  # announce what a neighbour should have from the author itself
        self.urgent_step = 0  # records of steps up to this one are on the critical path (the core sets it)
        self.want_timeout = want_timeout
        self.backup_delay = backup_delay
        self.links: dict[bytes, Link] = {}
        self.links_version = 0  # changes whenever a link comes or goes
        self._pending: set[bytes] = set()  # links with something queued
        self._wanted: dict[bytes, _Wanted] = {}
        self._rid_step: dict[bytes, int] = {}
        self._by_step: dict[int, list[bytes]] = {}
        self._next_retry = float("inf")  # the earliest want deadline
        self.now = 0.0

    # --- links ------------------------------------------------------------------------------
    def add_link(self, peer: bytes, now: float) -> Link:
        link = self.links.get(peer)
        if link is None:
            link = self.links[peer] = Link(peer, now, now)
            self.links_version += 1
        return link

    def drop_link(self, peer: bytes) -> None:
        if self.links.pop(peer, None) is not None:
            self.links_version += 1

    # --- records ----------------------------------------------------------------------------
    def note(self, rid: bytes, step: int) -> None:
        if rid not in self._rid_step:
            self._rid_step[rid] = step
            self._by_step.setdefault(step, []).append(rid)

    def step_of(self, rid: bytes) -> int | None:
        return self._rid_step.get(rid)

    def mark_known(self, peer: bytes, rid: bytes) -> None:
        link = self.links.get(peer)
        if link is not None:
            link.known.add(rid)

    def learned(self, record: Record, rid: bytes, source: bytes | None, own: bool) -> None:
        """A record new to us: queue it whole for the eager set, by id for the others."""
        self.note(rid, record.step)
        self._wanted.pop(rid, None)
        if source is not None and source in self.links:
            self.links[source].known.add(rid)
        author = record.machine
        if own:
            for peer, link in self.links.items():
                link.records[rid] = record
                link.known.add(rid)
                link.urgent = True
                self._pending.add(peer)
            return
        primary = []
        for peer, link in self.links.items():
            if peer == source or peer == author or rid in link.known:
                continue
            if author in link.neighbours:
                if self.backups:  # it has it from the author, unless that frame was lost
                    link.backup.setdefault(rid, self.now)
                    self._pending.add(peer)
            else:
                self._pending.add(peer)
                primary.append(link)
        eager = primary if len(primary) <= self.eager else self.rng.sample(primary, self.eager)
        chosen = {id(link) for link in eager}
        for link in primary:
            if id(link) in chosen:
                link.records[rid] = record
                link.known.add(rid)
            else:
                link.have[rid] = None

    def introduce(self, peer: bytes, from_step: int) -> None:
        """A new neighbour: announce the ids of what we hold of steps >= from_step (records
        that spread before the link came up reach it no other way)."""
        link = self.links.get(peer)
        if link is None:
            return
        for step in sorted(s for s in self._by_step if s >= from_step):
            for rid in self._by_step[step]:
                if rid not in link.known and rid not in link.records:
                    link.have[rid] = None
                    self._pending.add(peer)

    def heard_of(self, peer: bytes, rids, holds, now: float) -> None:
        """A neighbour announced ids: ask it for those we lack and nobody is asked for yet."""
        link = self.links.get(peer)
        if link is None:
            return
        for rid in rids:
            link.known.add(rid)
            if holds(rid):
                continue
            wanted = self._wanted.get(rid)
            if wanted is None:
                self._wanted[rid] = _Wanted(peer, now + self.want_timeout, [])
                self._next_retry = min(self._next_retry, now + self.want_timeout)
                link.want[rid] = None
                link.urgent = True
                self._pending.add(peer)
            elif peer != wanted.peer and peer not in wanted.holders:
                wanted.holders.append(peer)

    def answer(self, peer: bytes, records: list[Record]) -> None:
        """Records a neighbour asked for."""
        link = self.links.get(peer)
        if link is None:
            return
        for record in records:
            link.records[record.rid] = record
            link.known.add(record.rid)
        if records:
            link.urgent = True
            self._pending.add(peer)

    def departed(self, machine: bytes, step: int, source: bytes | None) -> None:
        """Pass a departure on to every neighbour but its source (and the departed itself); it
        rides on the next frame, at frame_interval when it concerns a step being sealed."""
        for peer, link in self.links.items():
            if peer != source and peer != machine:
                link.left[machine] = step
                if step <= self.urgent_step + 1:
                    link.urgent = True
                self._pending.add(peer)

    def _retry(self, now: float) -> None:
        """Wants that timed out, re-addressed to another neighbour that announced the id."""
        if now < self._next_retry:
            return
        self._next_retry = min((w.deadline for w in self._wanted.values() if w.deadline > now), default=float("inf"))
        for rid, wanted in list(self._wanted.items()):
            if now < wanted.deadline:
                continue
            holders = [h for h in wanted.holders if h in self.links]
            if not holders:
                del self._wanted[rid]
                continue
            peer = holders.pop(0)
            self._wanted[rid] = _Wanted(peer, now + self.want_timeout, holders)
            self._next_retry = min(self._next_retry, now + self.want_timeout)
            self.links[peer].want[rid] = None
            self.links[peer].urgent = True
            self._pending.add(peer)

    def flush(self, now: float) -> list[tuple[bytes, GossipFrame]]:
        """Frames due now: per link at most one per frame_interval; announcements wait a little
        to batch, backups until a frame goes anyway (or backup_delay); records and wants go as
        soon as the throttle allows."""
        self.now = now
        self._retry(now)
        out: list[tuple[bytes, GossipFrame]] = []
        for peer in sorted(self._pending):
            link = self.links.get(peer)
            if link is None or not (link.records or link.have or link.want or link.backup or link.left):
                self._pending.discard(peer)
                continue
            since = now - link.last_frame
            if since < self.frame_interval:
                continue
            critical = link.urgent or link.want or any(r.step <= self.urgent_step for r in link.records.values())
            if not critical:
                if link.records or link.have or link.left:
                    if since < self.lazy_interval:
                        continue  # records of later steps and announcements: batch up to lazy_interval
                elif now - min(link.backup.values()) < self.backup_delay:
                    continue  # backups alone: they ride on the next frame, or go after backup_delay
            records = list(link.records.values())
            have = [r for r in (*link.have, *link.backup) if r not in link.known]
            want = list(link.want)
            left = list(link.left.items())
            link.left.clear()
            link.records.clear()
            link.have.clear()
            link.backup.clear()
            link.want.clear()
            link.known.update(have)
            link.urgent = False
            link.last_frame = now
            self._pending.discard(peer)
            for i in range(0, max(len(records), len(have), len(want), len(left)), MAX_BATCH):
                out.append((peer, GossipFrame(tuple(records[i:i + MAX_BATCH]), tuple(have[i:i + MAX_BATCH]),
                                              tuple(want[i:i + MAX_BATCH]), tuple(left[i:i + MAX_BATCH]))))
        return out

    def forget_before(self, step: int) -> None:
        """Drop the bookkeeping of records of steps < step (they can no longer be admitted)."""
        old = [s for s in self._by_step if s < step]
        if not old:
            return
        gone: set[bytes] = set()
        for s in old:
            gone.update(self._by_step.pop(s))
        for rid in gone:
            self._rid_step.pop(rid, None)
            self._wanted.pop(rid, None)
        for link in self.links.values():
            link.known -= gone
            for pending in (link.have, link.records, link.backup):
                for rid in gone & pending.keys():
                    del pending[rid]
