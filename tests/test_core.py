"""The swarm core's rules, one at a time, without sockets: feed events, read the actions.

Every admission and trust rule of peer/core is named here and tested against the attack or
failure it exists for (issue "Strangers cannot break the swarm")."""

import subprocess
import sys

import pytest

from seedswarm.peer.core import CoreConfig, SwarmCore
from seedswarm.peer.core.events import (Compute, Connect, Disconnect, FetchCheckpoint, Finished, LinkDown, LinkUp, Log,
                                        Malformed, PeersFound, Rebuild, Rebuilt, Received, RecordReady, Seal, Send, StepSealed,
                                        Tick)
from seedswarm.protocol import ModelRef, Record, Signer, SwarmSpec, TaskRef
from seedswarm.protocol.messages import Gossip, RangeReply, RangeRequest, Status, Vote, Votes

SPEC = SwarmSpec(name="core", model=ModelRef("m"), task=TaskRef("k"), digest_every=5)
SWARM = SPEC.swarm_id
ME = Signer(bytes([1]) * 32)
PEERS = [Signer(bytes([i + 2]) * 32) for i in range(6)]


def core(**cfg) -> SwarmCore:
    return SwarmCore(SPEC, ME, CoreConfig(**{"target": 50, **cfg}), seed=7, digests={0: bytes(32)})


def rec(signer: Signer, step: int, grads: bytes = b"\x05") -> Record:
    return Record.create(signer, SWARM, step, 10, grads)


class Driver:
    """Feeds a core and keeps what it asked for; completes its tensor work at once."""

    def __init__(self, c: SwarmCore) -> None:
        self.core, self.now, self.actions = c, 0.0, []

    def feed(self, event, dt: float = 0.0) -> list:
        """Feed one event; Compute and Seal are carried out at once, as a worker would."""
        self.now += dt
        out = self.core.feed(event, self.now)
        self.actions += out
        for action in out:
            if isinstance(action, Compute):
                self.feed(RecordReady(rec(ME, action.step), 0.1))
            elif isinstance(action, Seal):
                digest = bytes([action.step % 256]) * 32 if (action.step + 1) % SPEC.digest_every == 0 else None
                self.feed(StepSealed(action.step, digest))
        return out

    def link(self, signer: Signer, sealed: int = 0, training: bool = True) -> None:
        self.feed(LinkUp(signer.machine))
        self.feed(Received(signer.machine, Status(sealed, Status.TRAINING if training else 0, 0, 100)))

    def logs(self, event: str) -> list[dict]:
        return [a.fields for a in self.actions if isinstance(a, Log) and a.event == event]

    def of(self, kind) -> list:
        return [a for a in self.actions if isinstance(a, kind)]


def training(n_peers: int = 2, peers: list[Signer] | None = None, **cfg) -> Driver:
    """A core past the start barrier with ``n_peers`` linked neighbours that train (the first
    of PEERS, or ``peers``)."""
    peers = PEERS[:n_peers] if peers is None else peers
    d = Driver(core(min_peers=1 + len(peers), **cfg))
    d.feed(PeersFound(tuple(p.machine for p in peers)))
    for p in peers:
        d.link(p, training=False)  # neighbours at the start barrier
    d.feed(Tick())
    assert d.core.phase == "train"
    return d


# --- purity ----------------------------------------------------------------------------------------
def test_the_core_imports_no_io_framework_and_no_tensor_library():
    code = ("import sys, seedswarm.peer.core, seedswarm.peer.sim; "
            "print(sorted(m for m in ('asyncio', 'hivemind', 'torch', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_same_events_give_the_same_actions():
    runs = []
    for _ in range(2):
        d = training(3)
        for p in PEERS[:3]:
            d.feed(Received(p.machine, Gossip((rec(p, 0),))), 0.01)
        d.feed(Tick(), 10)
        runs.append([type(a).__name__ + repr(getattr(a, "step", "")) for a in d.actions])
    assert runs[0] == runs[1]


# --- rounds ----------------------------------------------------------------------------------------
def test_a_departure_notice_ends_the_wait_for_a_crashed_author():
    """A neighbour's link dies while the round waits for its record: the peer tells its other
    neighbours (they would wait a deadline for a record that cannot come) and stops waiting;
    a notice about a member we are linked to is ignored; the member's next record cancels it."""
    d = training(3)
    for p in PEERS[:3]:
        d.feed(Received(p.machine, Gossip((rec(p, 0),))), 0.1)
    d.feed(Tick(), 10)
    assert any(s.step == 0 for s in d.of(Seal))
    # step 1: two authors are in, PEERS[0] crashes before its record
    for p in PEERS[1:3]:
        d.feed(Received(p.machine, Gossip((rec(p, 1),))), 0.1)
    assert not any(s.step == 1 for s in d.of(Seal))
    sent = d.feed(LinkDown(PEERS[0].machine), 0.1)
    sent += d.feed(Tick(), 0.3)  # (the next frame)
    notices = [a for a in sent if isinstance(a, Send) and isinstance(a.message, Gossip) and a.message.left]
    assert {a.peer for a in notices} == {PEERS[1].machine, PEERS[2].machine}
    assert notices[0].message.left == ((PEERS[0].machine, 1),)
    assert any(s.step == 1 for s in d.of(Seal))  # no deadline waited
    # a notice about a linked neighbour is ignored and not passed on
    out = d.feed(Received(PEERS[1].machine, Gossip(left=((PEERS[2].machine, d.core.horizon),))), 0.1)
    out += d.feed(Tick(), 1.0)
    assert not [a for a in out if isinstance(a, Send) and isinstance(a.message, Gossip) and a.message.left]
    assert PEERS[2].machine in d.core.round.expected


def test_a_peer_never_trains_alone_below_min_peers():
    """Its only neighbour crashes: after one round's deadline the peer stops sealing, says it is
    isolated, keeps what arrives, and resumes as soon as the neighbour trains again."""
    from seedswarm.peer.core.events import LinkDown
    d = training(1)
    other = PEERS[0]
    for step in (0, 1):
        d.feed(Received(other.machine, Gossip((rec(other, step),))), 0.1)
        d.feed(Tick(), 10)
    assert {0, 1} <= {s.step for s in d.of(Seal)}
    d.feed(LinkDown(other.machine), 0.1)
    for _ in range(20):
        d.feed(Tick(), 10)  # long past any deadline
    sealed = max(s.step for s in d.of(Seal))
    assert sealed <= 3, "sealed steps alone"
    assert d.logs("isolated") and d.logs("isolated")[-1]["need"] == 2
    d.link(other, sealed=sealed + 1, training=True)
    d.feed(Received(other.machine, Gossip((rec(other, sealed + 1),))), 0.1)
    for _ in range(3):
        d.feed(Tick(), 10)
    assert d.logs("resumed") and max(s.step for s in d.of(Seal)) > sealed


def test_a_peer_cut_off_from_the_peers_it_trains_with_waits_for_them_even_with_min_peers_1():
    """Every link drops at once (a relay died) while another peer was training with it: it
    does not seal steps that peer is still writing records for; it waits, and goes on alone
    only after ``alone_after`` seconds (the other may have crashed). A goodbye ends the wait."""
    from seedswarm.peer.core.events import LinkDown
    d = Driver(core(min_peers=1, alone_after=100.0))
    other = PEERS[0]
    d.feed(PeersFound((other.machine,)))
    d.link(other, training=True)
    d.feed(Tick())
    assert d.core.phase == "train"
    for step in (0, 1):
        d.feed(Received(other.machine, Gossip((rec(other, step),))), 0.1)
        d.feed(Tick(), 10)
    d.feed(LinkDown(other.machine), 0.1)
    for _ in range(5):
        d.feed(Tick(), 10)  # 50 s, long past any round deadline
    sealed = max(s.step for s in d.of(Seal))
    assert sealed <= 3, "sealed steps its partner is still writing"
    assert "lost every link" in d.logs("isolated")[-1]["reason"] and d.core.isolated
    for _ in range(8):
        d.feed(Tick(), 10)  # past alone_after: a swarm of one goes on
    assert max(s.step for s in d.of(Seal)) > sealed + 2 and d.logs("resumed")


def test_a_peer_whose_neighbours_go_quiet_seals_no_further_than_their_future_window_takes():
    """Its links stay up but no record comes through them (the neighbours' own links are
    being re-dialed through another relay, or they wait for a slow author): every round ends at its deadline, and after one such round nobody else
    is expected. It stops where its next record would be refused as too far ahead by most
    neighbours, and goes on as soon as they show progress."""
    d = training(2)
    for p in PEERS[:2]:
        d.feed(Received(p.machine, Status(0, Status.TRAINING, 0, 100)), 0.1)
    for step in (0, 1):
        for p in PEERS[:2]:
            d.feed(Received(p.machine, Gossip((rec(p, step),))), 0.1)
        d.feed(Tick(), 10)
    for _ in range(12):  # two minutes of round deadlines; only their stale statuses come through
        for p in PEERS[:2]:
            d.feed(Received(p.machine, Status(0, Status.TRAINING, 0, 100)), 0.1)
        d.feed(Tick(), 10)
    # they showed records of step 1 (computed at horizon 0 or later, delay 1)
    newest = max(r.step for r in d.of(Compute))
    assert newest < 0 + SPEC.future_window, "computed records the neighbours refuse"
    held = max(s.step for s in d.of(Seal))
    assert held <= SPEC.future_window - SPEC.delay - 2 and d.logs("held_back")
    for p in PEERS[:2]:  # they are through: their statuses say they sealed 3 steps
        d.feed(Received(p.machine, Status(3, Status.TRAINING, 0, 100)), 0.1)
    for _ in range(6):
        d.feed(Tick(), 10)
    assert max(s.step for s in d.of(Seal)) > held and d.logs("released")
    assert max(s.step for s in d.of(Seal)) <= 3 + SPEC.future_window - SPEC.delay - 2


def test_a_round_seals_as_soon_as_every_expected_author_is_in():
    d = training(2)
    for p in PEERS[:2]:
        d.feed(Received(p.machine, Gossip((rec(p, 0),))), 0.1)
    assert not any(s.step == 0 for s in d.of(Seal))  # the first round of a new swarm waits its deadline:
    d.feed(Tick(), 10)                                # nothing says yet who else trains
    assert any(s.step == 0 for s in d.of(Seal))
    d.feed(Received(PEERS[0].machine, Gossip((rec(PEERS[0], 1),))), 0.1)
    assert not any(s.step == 1 for s in d.of(Seal))
    d.feed(Received(PEERS[1].machine, Gossip((rec(PEERS[1], 1),))), 0.1)  # the last expected author: at once
    seal = next(s for s in d.of(Seal) if s.step == 1)
    assert {r.machine for r in seal.records} == {ME.machine, PEERS[0].machine, PEERS[1].machine}


def test_a_silent_peer_stalls_nobody_beyond_the_deadline():
    d = training(2)
    d.feed(Received(PEERS[0].machine, Gossip((rec(PEERS[0], 0),))), 0.1)
    d.feed(Tick(), 1.0)
    assert not any(s.step == 0 for s in d.of(Seal))  # the first deadline is generous
    d.feed(Tick(), 10.0)
    assert any(s.step == 0 for s in d.of(Seal)) and d.logs("round_deadline")


def test_a_fresh_swarm_waits_for_min_peers():
    d = Driver(core(min_peers=3))
    d.feed(PeersFound((PEERS[0].machine,)))
    d.link(PEERS[0], training=False)
    d.feed(Tick(), 1)
    assert d.core.phase == "barrier" and not d.of(Compute)
    d.link(PEERS[1], training=False)
    d.feed(Tick(), 1)
    assert d.core.phase == "train" and d.of(Compute)


# --- admission ---------------------------------------------------------------------------------------
def test_a_far_future_record_is_refused_and_moves_nobody():
    d = training(2)
    far = rec(PEERS[0], 1_000_000)
    d.feed(Received(PEERS[0].machine, Gossip((far,))), 0.1)
    assert d.core.reasons["too far ahead"] == 1 and d.core.rejects_of[PEERS[0].machine] == 1
    assert d.core.horizon <= 1 and not d.core.ledger.has(far.rid)
    # a record inside the future window is held, but one author cannot make us skip steps
    ahead = rec(PEERS[0], 3)
    d.feed(Received(PEERS[0].machine, Gossip((ahead,))), 0.1)
    assert d.core.ledger.has(ahead.rid) and d.core.horizon <= 1


def test_a_neighbour_claiming_a_far_frontier_cannot_pull_us_forward():
    d = training(3)
    d.feed(Received(PEERS[2].machine, Status(10 ** 9, Status.TRAINING, 0, 1)), 0.1)
    d.feed(Tick(), 0.1)
    assert d.core.phase == "train" and not d.of(Send) or all(
        not isinstance(a.message, RangeRequest) for a in d.of(Send))


def test_records_of_the_wrong_width_or_with_a_bad_signature_are_refused_and_blamed():
    d = training(2)
    wide = Record.create(PEERS[0], SWARM, 0, 10, b"\x01" * 1024)
    forged = Record(step=0, machine=PEERS[1].machine, scale_exp=10, grads=b"\x01", signature=bytes(64))
    other_swarm = Record.create(PEERS[0], bytes(32), 0, 10, b"\x01")
    d.feed(Received(PEERS[0].machine, Gossip((wide, forged, other_swarm))), 0.1)
    assert not any(d.core.ledger.has(r.rid) for r in (wide, forged, other_swarm))
    assert d.core.rejects_from[PEERS[0].machine] == 3


def test_a_neighbour_that_keeps_sending_garbage_is_dropped_and_banned():
    d = training(2, max_rejects=5)
    for _ in range(5):
        d.feed(Malformed(PEERS[0].machine, "junk"), 0.01)
    assert any(a.peer == PEERS[0].machine for a in d.of(Disconnect)) and d.logs("banned")
    before = len(d.of(Disconnect))
    d.feed(LinkUp(PEERS[0].machine), 1)  # it comes back at once: refused
    assert len(d.of(Disconnect)) == before + 1 and PEERS[0].machine not in d.core.gossip.links


def test_a_flooding_neighbour_is_rate_limited():
    d = training(2, rate_limit=20, max_rejects=10)
    for _ in range(40):
        d.feed(Received(PEERS[0].machine, Status(0, Status.TRAINING, 0, 1)))
    assert d.core.reasons["rate limit"] >= 10 and PEERS[0].machine not in d.core.gossip.links


def test_an_equivocation_voids_the_author_and_is_passed_on_as_evidence():
    d = training(3)
    a, b = rec(PEERS[0], 0, b"\x05"), rec(PEERS[0], 0, b"\x06")
    d.feed(Received(PEERS[0].machine, Gossip((a,))), 0.1)
    d.feed(Received(PEERS[1].machine, Gossip((b,))), 0.1)
    assert d.logs("equivocation") and d.core.ledger.equivocated(0, PEERS[0].machine)
    assert d.core.equivocators == {PEERS[0].machine: 0} and d.core.weight(PEERS[0].machine) == 0
    assert PEERS[0].machine not in d.core.round.missing  # nobody waits for an equivocator
    forwarded = [s for s in d.of(Send) if isinstance(s.message, Gossip) and b.rid in s.message.have + tuple(
        r.rid for r in s.message.records)]
    d.feed(Tick(), 0.5)
    assert forwarded or any(b.rid in link.known for link in d.core.gossip.links.values())


def test_a_late_record_is_applied_by_a_rebuild_and_a_flood_of_them_costs_one_rebuild():
    d = training(2, rebuild_every=4)
    for step in range(3):
        for p in PEERS[:2]:
            d.feed(Received(p.machine, Gossip((rec(p, step),))), 0.05)
    assert d.core.sealed >= 3
    late = [rec(PEERS[2], s) for s in (0, 1, 2)]  # another author's records of sealed steps
    d.feed(Received(PEERS[0].machine, Gossip(tuple(late))), 0.05)
    rebuilds = d.of(Rebuild)
    assert len(rebuilds) == 1 and rebuilds[0].first == 0 and len(rebuilds[0].records) == 3


def test_a_record_older_than_the_late_window_is_refused():
    d = training(2)
    for step in range(SPEC.late_window + 3):
        for p in PEERS[:2]:
            d.feed(Received(p.machine, Gossip((rec(p, step),))), 0.05)
    old = rec(PEERS[2], 0)
    d.feed(Received(PEERS[0].machine, Gossip((old,))), 0.05)
    assert d.core.reasons["too late"] == 1 and not d.core.ledger.has(old.rid)


def test_a_range_reply_nobody_asked_for_is_blamed():
    d = training(2)
    d.feed(Received(PEERS[0].machine, RangeReply(0, 1, False, (rec(PEERS[0], 0),))), 0.1)
    assert d.core.rejects_from[PEERS[0].machine] == 1


# --- trust ------------------------------------------------------------------------------------------
def run_to(d: Driver, steps: int, authors) -> None:
    for step in range(d.core.horizon, steps):
        for p in authors:
            d.feed(Received(p.machine, Gossip((rec(p, step),))), 0.05)


def test_fresh_identities_cannot_vote_a_replica_into_healing():
    d = training(2)
    run_to(d, 20, PEERS[:2])
    step = 10
    mine = d.core.digests[step]
    for sybil in PEERS[3:6]:  # three identities that never contributed a record
        d.link(sybil)
        d.feed(Received(sybil.machine, Votes((Vote.create(sybil, SWARM, step, b"\xee" * 32),))), 0.01)
    d.feed(Tick(), 30)
    assert not d.logs("heal") and d.core.digests[step] == mine


def test_a_standing_majority_makes_an_outvoted_replica_heal():
    d = training(3)
    run_to(d, 20, PEERS[:3])
    step = 10
    for p in PEERS[:3]:
        d.feed(Received(p.machine, Votes((Vote.create(p, SWARM, step, b"\xaa" * 32),))), 0.01)
    d.feed(Tick(), 30)
    heal = d.logs("heal")
    assert heal and heal[0]["winner"] == (b"\xaa" * 32).hex()
    asks = [a for a in d.of(Send) if isinstance(a.message, RangeRequest)]
    assert asks and asks[-1].peer in {p.machine for p in PEERS[:3]}


# ties between two established replicas go to the side of the smaller machine id
SMALLER, LARGER = (next(p for p in PEERS if (p.machine < ME.machine) == smaller) for smaller in (True, False))


def tie(other: Signer, digest: bytes) -> Driver:
    """Two established replicas that agreed after 5 steps (its vote says so) and sealed the
    next five differently: one vote each."""
    d = training(peers=[other])
    run_to(d, 20, [other])
    agreed = Vote.create(other, SWARM, 5, d.core.digests[5])
    d.feed(Received(other.machine, Votes((agreed, Vote.create(other, SWARM, 10, digest)))), 0.01)
    d.feed(Tick(), 30)
    return d


def test_the_leader_of_an_even_split_keeps_its_weights_and_reports_the_split():
    d = tie(LARGER, b"\xff" * 32)  # (a larger digest does not matter: the smaller machine id leads)
    assert d.logs("split") == [{"step": 10, "leading_weight": 16, "total": 32, "leading": True}]
    assert not d.logs("heal") and d.core.digests[10] == bytes([9]) * 32


def test_a_replica_never_outvotes_a_disagreeing_member_with_its_own_weight_alone():
    """Each side of a two-peer split weighs the other by what it applied of the other's
    records; the side that applied less must not call itself a majority of one."""
    d = training(peers=[SMALLER], standing_cap=32)  # (established from 16)
    run_to(d, 20, [SMALLER])
    for _ in range(10):  # the other's records of these steps never reached us (it is alive)
        d.feed(Received(SMALLER.machine, Status(d.core.sealed, Status.TRAINING, 0, 100)), 10)
    assert 16 <= d.core.weight(SMALLER.machine) < d.core.weight(ME.machine)
    d.feed(Received(SMALLER.machine, Votes((Vote.create(SMALLER, SWARM, 10, b"\x00" * 32),))), 0.01)
    d.feed(Tick(), 30)
    assert d.logs("heal") and d.logs("heal")[0]["majority"] is False


def heal_by_records(d: Driver, other: Signer) -> Rebuild:
    """Serve the heal's range request with the neighbour's records; return the rebuild asked for."""
    ask = [a for a in d.of(Send) if isinstance(a.message, RangeRequest)][-1]
    assert ask.peer == other.machine
    records = tuple(rec(other, s, b"\x07") for s in range(ask.message.first, ask.message.last))
    d.feed(Received(other.machine, RangeReply(ask.message.first, ask.message.last, False, records)), 0.1)
    return d.of(Rebuild)[-1]


def test_the_other_side_of_an_even_split_follows_the_leaders_records_never_its_weights():
    """No majority can form between two honest replicas: the one that does not lead replays
    the leader's records, and keeps them only if they reproduce the leader's digest; a
    leader whose records miss its digest (tried from our last agreement, then from the
    start) costs rebuilds, gets no checkpoint download, and is not followed again."""
    leader = b"\x00" * 32
    d = tie(SMALLER, leader)
    assert d.logs("heal")[0]["majority"] is False and d.logs("heal")[0]["from_step"] == 5
    before = sorted(r.rid for r in d.core.ledger.ordered())
    for first in (5, 0):
        rebuild = heal_by_records(d, SMALLER)
        assert rebuild.replace and rebuild.expect == (10, leader) and rebuild.first == first
        assert sorted(r.rid for r in d.core.ledger.ordered()) != before
        d.feed(Rebuilt(d.core.sealed, {10: bytes([9]) * 32}, kept=False), 0.1)  # the records gave another digest
    assert d.logs("healed")[-1]["ok"] is False and not d.of(FetchCheckpoint)
    assert sorted(r.rid for r in d.core.ledger.ordered()) == before and d.core.digests[10] == bytes([9]) * 32
    run_to(d, 30, [SMALLER])
    d.feed(Received(SMALLER.machine, Votes((Vote.create(SMALLER, SWARM, 20, leader),))), 0.01)
    d.feed(Tick(), 30)
    assert len(d.logs("heal")) == 1 and d.logs("split")[-1] == {"step": 20, "leading_weight": 16, "total": 32,
                                                                 "leading": False}


def test_records_that_reproduce_the_leaders_digest_end_an_even_split():
    leader = b"\x00" * 32
    d = tie(SMALLER, leader)
    heal_by_records(d, SMALLER)
    d.feed(Rebuilt(d.core.sealed, {10: leader}), 0.1)
    assert d.logs("healed")[-1] == {"step": 10, "how": "ledger", "ok": True} and d.core.revision == 1
    revised = [v for a in d.of(Send) if isinstance(a.message, Votes) for v in a.message.votes if v.step == 10]
    assert revised[-1].digest == leader and revised[-1].revision == 1


def test_a_vote_relayed_for_another_machine_is_blamed_on_the_relay():
    d = training(2)
    d.feed(Received(PEERS[0].machine, Votes((Vote.create(PEERS[1], SWARM, 5, b"\xaa" * 32),))), 0.01)
    assert d.core.rejects_from[PEERS[0].machine] == 1 and not d.core.votes.of(5)


def test_a_peer_finishes_at_its_target_after_the_final_vote():
    d = training(2, target=6, finish_timeout=5)
    run_to(d, 6, PEERS[:2])
    d.feed(Tick(), 10)
    d.feed(Tick(), 10)
    assert d.of(Finished) and d.of(Finished)[0].summary["step"] == 6


# --- joining -----------------------------------------------------------------------------------------
def test_a_newcomer_takes_the_lower_median_of_its_neighbours_frontier():
    d = Driver(core(join_by="replay"))
    d.feed(PeersFound(tuple(p.machine for p in PEERS[:4])))
    for p, sealed in zip(PEERS[:4], (40, 41, 42, 10 ** 9)):  # one liar
        d.link(p, sealed)
    d.feed(Tick(), 0.1)
    joining = d.logs("joining")
    assert joining and joining[0]["frontier"] == 41
    asks = [a.message for a in d.of(Send) if isinstance(a.message, RangeRequest)]
    assert asks and asks[0].first == 0 and asks[0].last <= 41


def test_a_replay_joiner_seals_what_its_range_reply_holds():
    d = Driver(core(join_by="replay", target=5))
    d.feed(PeersFound((PEERS[0].machine,)))
    d.link(PEERS[0], 3)
    d.feed(Tick(), 0.1)
    records = tuple(rec(PEERS[0], s) for s in range(3))
    d.feed(Received(PEERS[0].machine, RangeReply(0, 3, False, records)), 0.1)
    assert [s.step for s in d.of(Seal)][:3] == [0, 1, 2]
    assert d.logs("joined")


def test_a_joiner_holds_the_records_pushed_while_it_catches_up_and_seals_with_them_on_arrival():
    """While it fetches the sealed steps by range, the swarm pushes it the records of the steps
    being collected, far ahead of its window. Refused, they would reach it no other way: it
    would wait a round deadline for them and fall behind again. Held aside (only up to where
    most neighbours are + the future window), they are admitted as its window reaches them."""
    d = Driver(core(join_by="replay", target=30))
    d.feed(PeersFound(tuple(p.machine for p in PEERS[:2])))
    for p in PEERS[:2]:
        d.link(p, 20)
    d.feed(Tick(), 0.1)
    pushed = [rec(p, s) for s in (20, 21) for p in PEERS[:2]]
    beyond = rec(PEERS[0], 20 + SPEC.future_window)  # past where the swarm is: refused as before
    for p in PEERS[:2]:
        d.feed(Received(p.machine, Gossip(tuple(r for r in pushed if r.machine == p.machine) + (
            (beyond,) if p is PEERS[0] else ()))), 0.1)
    assert d.core.reasons["too far ahead"] == 1 and d.core.rejects_of[PEERS[0].machine] == 1
    ask = next(a for a in d.of(Send) if isinstance(a.message, RangeRequest))
    sealed = tuple(rec(p, s) for s in range(20) for p in PEERS[:2])
    d.feed(Received(ask.peer, RangeReply(0, 20, False, sealed)), 0.1)
    assert d.logs("joined") and d.core.horizon >= 20
    assert all(d.core.ledger.has(r.rid) for r in pushed) and not d.core.ledger.has(beyond.rid)
    d.feed(Tick(), 0.1)  # its own record of step 21 (20 + delay) is not due at 20: step 20 seals at once
    seal = next(s for s in d.of(Seal) if s.step == 20)
    assert {r.machine for r in seal.records} == {p.machine for p in PEERS[:2]}
    assert not d.logs("round_deadline")


def test_a_range_request_whose_link_went_down_is_asked_again_at_once():
    from seedswarm.peer.core.events import LinkDown
    d = Driver(core(join_by="replay", target=30))
    d.feed(PeersFound(tuple(p.machine for p in PEERS[:3])))
    for p in PEERS[:3]:
        d.link(p, 20)
    d.feed(Tick(), 0.1)
    first = next(a for a in d.of(Send) if isinstance(a.message, RangeRequest))
    d.feed(LinkDown(first.peer), 0.1)
    d.feed(Tick(), 0.1)  # long before the range timeout
    asks = [a for a in d.of(Send) if isinstance(a.message, RangeRequest)]
    assert len(asks) == 2 and asks[1].peer != first.peer and asks[1].message.first == 0


@pytest.mark.parametrize("bad", ["signature", "outside"])
def test_a_range_reply_with_bad_records_is_not_believed(bad):
    d = Driver(core(join_by="replay", target=5))
    d.feed(PeersFound((PEERS[0].machine,)))
    d.link(PEERS[0], 3)
    d.feed(Tick(), 0.1)
    if bad == "signature":
        records = (Record(step=0, machine=PEERS[1].machine, scale_exp=10, grads=b"\x01", signature=bytes(64)),)
    else:
        records = (rec(PEERS[0], 7),)
    d.feed(Received(PEERS[0].machine, RangeReply(0, 3, False, records)), 0.1)
    sealed = {r.rid for s in d.of(Seal) for r in s.records}
    assert not sealed & {r.rid for r in records}


def test_a_replica_whose_history_needs_repair_never_starts_alone():
    from seedswarm.peer.core.events import Fail

    d = Driver(core(needs_peers="ledger.ssl damaged at offset 1234"))
    d.feed(PeersFound(()))
    d.feed(Tick(), 5)
    assert d.core.phase == "start" and not d.of(Compute)  # it does not think it is the first peer
    d.feed(Tick(), 10)
    fail = d.of(Fail)
    assert fail and "offset 1234" in fail[0].reason and not d.of(Compute)
    # with a neighbour that answers, it catches up from it instead
    d = Driver(core(needs_peers="damaged", join_by="replay"))
    d.feed(PeersFound((PEERS[0].machine,)))
    d.link(PEERS[0], 30)
    d.feed(Tick(), 3)
    assert not d.of(Fail) and any(isinstance(a.message, RangeRequest) for a in d.of(Send))


def test_a_peer_that_refuses_our_link_is_redialed_only_after_a_growing_backoff():
    """A full peer (at max_accept) closes a new link before saying anything; redialing it
    every maintenance round would cost both sides a handshake each time."""
    from seedswarm.peer.core.core import REFUSED_BACKOFF, REFUSED_BACKOFF_MAX

    full = PEERS[0].machine
    d = Driver(core(min_peers=2, max_links=1))
    d.feed(PeersFound((full,)))
    d.feed(Tick(), 1.0)
    dials = [1.0]
    assert [a.peer for a in d.of(Connect)] == [full]
    waits = []
    for _ in range(6):
        d.feed(LinkUp(full))
        d.feed(LinkDown(full))            # closed by the other side, no status
        before = len(d.of(Connect))
        while len(d.of(Connect)) == before:
            d.feed(Tick(), 0.5)
        waits.append(d.now - dials[-1])
        dials.append(d.now)
    assert waits[0] >= REFUSED_BACKOFF and all(b >= a for a, b in zip(waits, waits[1:]))
    assert max(waits) <= REFUSED_BACKOFF_MAX + 1.0
    # once it answers with a status, it is a neighbour like any other: the backoff is forgotten
    d.link(PEERS[0])
    assert full not in d.core._refused


def test_a_newcomer_that_knows_members_waits_for_a_status_before_taking_step_0_for_the_swarms_place():
    """Under load a joiner's links can take longer than start_timeout to bring a status: it
    must not enter as if the swarm were new (it would then catch up by records, not by the
    checkpoint it asked for)."""
    d = Driver(core(min_peers=2, start_timeout=10.0))
    d.feed(PeersFound((PEERS[0].machine,)))
    for _ in range(30):
        d.feed(Tick(), 0.5)  # 15 s: past start_timeout, no status heard
    assert d.core.phase == "start"
    d.feed(LinkUp(PEERS[0].machine))
    d.feed(Received(PEERS[0].machine, Status(60, Status.TRAINING, 50, 100)), 0.1)
    for _ in range(10):
        d.feed(Tick(), 0.5)
    assert d.logs("joining") and d.logs("joining")[0]["frontier"] == 60
