"""Real peer processes on loopback: joining, leaving, crashing, resuming, healing, and strangers.

Each test starts `seedswarm peer` processes (own DHT node and p2pd each) with a tiny random
BERT so that steps are fast, and checks what users rely on: replicas end bit-identical, no
process outlives its peer, and hostile strangers with valid identities change nothing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import transformers
from hivemind.p2p import PeerID

from hostile import Hostile
from seedswarm.model import build_task, evaluate, read_jsonl
from seedswarm.model.digest import weight_digest
from seedswarm.model.replica import replay
from seedswarm.peer.launcher import PeerProcess
from seedswarm.protocol import Ledger, Record, SwarmSpec, decode_ledger
from seedswarm.protocol.aggregation import clip_bound, step_gradients
from seedswarm.protocol.messages import Gossip, Status, Vote, Votes

pytestmark = pytest.mark.slow


def peer(setup, run: Path, name: str, data: int, *extra: str, steps: int) -> PeerProcess:
    args = ["--swarm-spec", str(setup / "spec.json"), "--steps", str(steps), "--checkpoint-every", "10",
            "--data", str(setup / f"data{data}.jsonl"), "--checkpoint-dir", str(run / name), *extra]
    return PeerProcess(name, args, run)


def finish(peers: list[PeerProcess], timeout: float = 900) -> list[dict]:
    summaries = []
    try:
        for p in peers:
            assert p.wait(timeout) == 0, p.output()[-3000:]
            summaries.append(p.summary())
    finally:
        for p in peers:
            p.stop()
    return summaries


def ledger_of(run: Path, name: str) -> Ledger:
    return Ledger(decode_ledger((run / name / "ledger.ssl").read_bytes())[1])


def applied(ledger: Ledger, steps: int) -> list[list[bytes]]:
    return [[r.rid for r in ledger.applicable(s)] for s in range(steps)]


def machine_of(p: PeerProcess) -> bytes:
    return PeerID.from_base58(p.events()[0]["peer_id"]).to_bytes()


def events(p: PeerProcess, kind: str) -> list[dict]:
    return [e for e in p.events() if e["event"] == kind]


def test_a_killed_peer_resumes_with_nothing_lost(tiny_swarm, tmp_path):
    steps = 120
    a = peer(tiny_swarm, tmp_path, "a", 0, "--min-peers", "2", steps=steps)
    maddrs = a.maddrs()
    b = peer(tiny_swarm, tmp_path, "b", 1, "--initial-peers", *maddrs, "--min-peers", "2", steps=steps)
    restarted = None
    try:
        b.wait_for_step(40)
        b.kill()
        killed_at = b.step()
        restarted = PeerProcess("b2", ["--resume", "--checkpoint-dir", str(tmp_path / "b"), "--steps", str(steps),
                                       "--data", str(tiny_swarm / "data1.jsonl"), "--initial-peers", *maddrs], tmp_path)
        summaries = finish([a, restarted])
    finally:
        for p in (a, b, restarted):
            if p is not None:
                p.stop()
    assert summaries[0]["digest"] == summaries[1]["digest"]
    assert events(restarted, "started")[0]["resumed"] is True
    assert summaries[1]["peer_id"] == b.events()[0]["peer_id"]  # same identity
    ledger_a, ledger_b = ledger_of(tmp_path, "a"), ledger_of(tmp_path, "b")
    assert applied(ledger_a, steps) == applied(ledger_b, steps)
    mine = machine_of(b)
    assert mine not in ledger_b.equivocators()  # it never signed two records of one step, across the crash
    assert any(r.machine == mine and r.step < killed_at for r in ledger_b)
    assert any(r.machine == mine and r.step > killed_at + 5 for r in ledger_b)


def test_a_stock_hivemind_dht_can_be_the_only_bootstrap(tiny_swarm, tmp_path):
    exe = Path(sys.executable).with_name("hivemind-dht")
    boot = subprocess.Popen([str(exe), "--host_maddrs", "/ip4/127.0.0.1/tcp/0"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        maddr = None
        deadline = time.monotonic() + 60
        while maddr is None and time.monotonic() < deadline:
            found = re.search(r"(/ip4/127\.0\.0\.1/tcp/\d+/p2p/\w+)", boot.stdout.readline())
            maddr = found.group(1) if found else None
        assert maddr, "hivemind-dht printed no multiaddr"
        peers = [peer(tiny_swarm, tmp_path, n, i, "--initial-peers", maddr, "--min-peers", "2", steps=20)
                 for n, i in (("a", 0), ("b", 1))]
        summaries = finish(peers)
    finally:
        boot.terminate()
        boot.wait(20)
    assert summaries[0]["digest"] == summaries[1]["digest"]
    assert summaries[0]["ledger_records"] == 40


def test_strangers_cannot_crash_stall_or_fork_the_swarm(tiny_swarm, tmp_path):
    """A stranger with a valid identity: malformed member entries (the old crash: a signed `{}`
    heartbeat), junk and oversized frames, forged and too-wide records, a record of step
    1,000,000, a record of every recent step (late spam), and an equivocation every step."""
    steps = 150
    a = peer(tiny_swarm, tmp_path, "a", 0, "--min-peers", "2", steps=steps)
    maddrs = a.maddrs()
    b = peer(tiny_swarm, tmp_path, "b", 1, "--initial-peers", *maddrs, "--min-peers", "2", steps=steps)
    b.maddrs()
    spec = SwarmSpec.from_json((tiny_swarm / "spec.json").read_text())
    swarm = bytes.fromhex(a.events()[0]["swarm_id"])
    honest = [machine_of(a), machine_of(b)]
    a.wait_for_step(5)
    h = Hostile(maddrs, swarm)
    rounds = 0
    try:
        assert h.store_member({})  # the malformed heartbeat of v1, now a member entry: properly signed, nonsense inside
        assert h.store_member({"step": "x"}, bucket=0)
        h.store_unsigned_as(honest[0], {})  # under an honest peer's subkey without its signature
        for m in honest:
            h.link(m)
        deadline = time.monotonic() + 120
        while rounds < 4 or (time.monotonic() < deadline and a.step() < steps - 40):
            t = max(a.step(), b.step())
            mine = [Record.create(h.signer, swarm, s, 0, b"\x7f") for s in range(max(0, t - 6), t + 2)]  # late spam
            twin = Record.create(h.signer, swarm, t + 1, 0, b"\x01")  # a second record of step t+1: equivocation
            forged = Record(step=t, machine=honest[0], scale_exp=0, grads=b"\x7f", signature=bytes(64))
            wide = Record.create(h.signer, swarm, t, 0, b"\x7f" * 1024)
            far = Record.create(h.signer, swarm, 1_000_000, 0, b"\x7f")
            for m in honest:
                h.send(m, Gossip(tuple(mine) + (forged, wide, far)))
                h.send(m, Gossip((twin,)))
                h.send(m, Status(10 ** 9, Status.TRAINING, 0, 1))  # "the swarm is far ahead"
                h.send(m, Votes((Vote.create(h.signer, swarm, 5, b"\xee" * 32),)))
                h.send_raw(m, b"\xc1\xff garbage")
                h.send_raw(m, b"", length=1 << 40)  # announces a terabyte
            rounds += 1
            time.sleep(1.0)
        summaries = finish([a, b])
    finally:
        h.close()
        a.stop()
        b.stop()
    assert rounds >= 4 and all(s["step"] == steps for s in summaries)  # nobody crashed, stalled or skipped ahead
    assert summaries[0]["digest"] == summaries[1]["digest"]
    assert all(s["rejected"] > 0 for s in summaries)
    led = ledger_of(tmp_path, "a")
    assert applied(led, steps) == applied(ledger_of(tmp_path, "b"), steps)
    assert max(r.step for r in led) < steps  # the far-future record is nowhere
    assert h.machine in led.equivocators()  # its doubled steps are void
    assert not any(r.machine == h.machine for s in range(steps) if led.equivocated(s, h.machine)
                   for r in led.applicable(s))
    assert {r.machine for r in led} <= set(honest) | {h.machine}
    assert all(r.n == spec.samples_per_step for r in led)


def test_fresh_identities_cannot_take_over_the_weights_or_a_newcomer(tiny_swarm, tmp_path):
    """Three identities that never contributed vote for weights of their choice at every digest
    step and serve a checkpoint with exactly those weights; a newcomer joins by checkpoint."""
    steps = 120
    a = peer(tiny_swarm, tmp_path, "a", 0, "--min-peers", "2", steps=steps)
    maddrs = a.maddrs()
    b = peer(tiny_swarm, tmp_path, "b", 1, "--initial-peers", *maddrs, "--min-peers", "2", steps=steps)
    b.maddrs()
    swarm = bytes.fromhex(a.events()[0]["swarm_id"])
    honest = [machine_of(a), machine_of(b)]
    a.wait_for_step(3)
    sybils = [Hostile(maddrs, swarm) for _ in range(3)]
    # their checkpoint: real safetensors of the right shapes, different weights (a's base, perturbed)
    fake_file = tmp_path / "fake.safetensors"
    model = transformers.AutoModel.from_pretrained(tiny_swarm / "tiny")
    with __import__("torch").no_grad():
        next(model.parameters()).add_(0.5)
    from safetensors.torch import save_file

    save_file({n: p.detach().contiguous() for n, p in model.named_parameters()}, str(fake_file))
    fake = weight_digest(model)
    joiner = None
    try:
        for s in sybils:
            from seedswarm.protocol.directory import MemberInfo

            s.store_member(MemberInfo(step=10 ** 6, status="training", name="sybil").to_obj())
            for m in honest:
                s.link(m)
        for step in range(10, 60, 10):
            a.wait_for_step(step + 10)
            for s in sybils:
                s.serve_checkpoint(fake_file, step, fake) if step == 10 else None
                for m in honest + ([machine_of(joiner)] if joiner else []):
                    s.send(m, Status(step + 5, Status.TRAINING, step, 1))
                    s.send(m, Votes((Vote.create(s.signer, swarm, step, bytes.fromhex(fake)),)))
            if step == 30:
                joiner = peer(tiny_swarm, tmp_path, "j", 2, "--initial-peers", *maddrs, "--join-by", "checkpoint",
                              steps=steps)
                joiner.maddrs()
                for s in sybils:
                    s.link(machine_of(joiner))
        summaries = finish([a, b, joiner])
    finally:
        for s in sybils:
            s.close()
        for p in (a, b, joiner):
            if p is not None:
                p.stop()
    # the attack changes nothing: every replica, the newcomer's too, ends identical, the founders
    # never heal, and no replica holds the fake weights
    assert len({s["digest"] for s in summaries}) == 1 and fake not in {s["digest"] for s in summaries}, summaries
    assert all(s["heals"] == 0 for s in summaries[:2])
    assert not any(e.get("digest") == fake for e in events(joiner, "join_checkpoint"))


def test_a_hostile_peers_bytes_move_the_weights_no_further_than_an_honest_peers(tiny_swarm, tmp_path):
    """A stranger that follows the protocol to the letter but sends the largest byte with a
    random sign every step: the step rule clips it to the step's median gradient."""
    steps = 60
    a = peer(tiny_swarm, tmp_path, "a", 0, "--min-peers", "2", steps=steps)
    maddrs = a.maddrs()
    b = peer(tiny_swarm, tmp_path, "b", 1, "--initial-peers", *maddrs, "--min-peers", "2", steps=steps)
    b.maddrs()
    spec = SwarmSpec.from_json((tiny_swarm / "spec.json").read_text())
    swarm = bytes.fromhex(a.events()[0]["swarm_id"])
    h = Hostile(maddrs, swarm)
    sent = set()
    try:
        for m in (machine_of(a), machine_of(b)):
            h.link(m)
        while a.proc.poll() is None and a.step() < steps - 3:
            t = a.step()
            for s in (t, t + 1):
                if s not in sent:
                    sent.add(s)
                    record = Record.create(h.signer, swarm, s, 0, bytes([0x7F if s % 2 else 0x81]))
                    for m in h.linked():
                        h.send(m, Gossip((record,)))
            time.sleep(0.05)
        summaries = finish([a, b])
    finally:
        h.close()
        a.stop()
        b.stop()
    assert summaries[0]["digest"] == summaries[1]["digest"]
    led = ledger_of(tmp_path, "a")
    bounded = 0
    for s in range(steps):
        records = led.applicable(s)
        values = [v for r in records for v in r.values(spec.codec.clip)]
        if len(records) == 3 and any(r.machine == h.machine for r in records):
            bound = clip_bound(spec, values)
            effect = abs(step_gradients(spec, records)[[r.machine for r in records].index(h.machine)][0])
            assert effect <= bound <= spec.aggregation.clip_factor * sorted(abs(v) for v in values)[1]
            # its byte said "clip" (64): redescending, it counts bound^2 / 64, less than an honest gradient at the bound
            assert effect <= bound * bound / spec.codec.clip * (1 + 1e-6) and effect < bound
            bounded += 1
    assert bounded >= steps // 3, "the stranger's records were in most steps"


def test_a_drifting_replica_heals_itself_from_the_majority(tiny_swarm, tmp_path):
    steps = 120
    a = peer(tiny_swarm, tmp_path, "a", 0, "--min-peers", "3", steps=steps)
    maddrs = a.maddrs()
    b = peer(tiny_swarm, tmp_path, "b", 1, "--initial-peers", *maddrs, "--min-peers", "3", steps=steps)
    c = peer(tiny_swarm, tmp_path, "c", 2, "--initial-peers", *maddrs, "--min-peers", "3", "--fault-corrupt-at", "12",
             steps=steps)
    a.wait_for_step(20)
    # while it trains, the swarm is visible to `seedswarm status` and `seedswarm swarms`
    exe = str(Path(sys.executable).with_name("seedswarm"))
    swarm = a.events()[0]["swarm_id"]
    deadline = time.monotonic() + 90  # member entries are refreshed every few seconds while peers progress
    while True:
        status = subprocess.run([exe, "status", "--initial-peers", *maddrs, "--swarm", swarm, "--json"],
                                capture_output=True, text=True, timeout=120)
        assert status.returncode == 0, status.stderr
        rows = json.loads(status.stdout).get(swarm, [])
        if ({r["name"] for r in rows} >= {"a", "b", "c"} and all(r["step"] >= 1 for r in rows)) \
                or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert {r["name"] for r in rows} >= {"a", "b", "c"} and all(r["step"] >= 1 for r in rows), rows
    listing = subprocess.run([exe, "swarms", "--initial-peers", *maddrs, "--json"], capture_output=True, text=True,
                             timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert any(row["swarm_id"] == swarm and row["name"] == "test" for row in json.loads(listing.stdout))
    summaries = finish([a, b, c])
    assert len({s["digest"] for s in summaries}) == 1
    assert summaries[2]["heals"] >= 1 and summaries[0]["heals"] == 0 and summaries[1]["heals"] == 0
    healed = events(c, "healed")
    assert healed and healed[-1]["ok"] is True
    assert applied(ledger_of(tmp_path, "a"), steps) == applied(ledger_of(tmp_path, "c"), steps)


def test_sixteen_peers_train_take_joiners_lose_two_and_keep_every_dht_value_bounded(tiny_swarm, tmp_path):
    """Sixteen real peer processes on one host: twelve founders, two joiners (by checkpoint and
    by replay), then one founder leaves politely (SIGTERM) and one is SIGKILLed; the fourteen
    left end bit-identical, their ledgers replay onto the base weights to the same digest, and
    no process outlives its peer. Meanwhile a stranger reads every key of the swarm from the
    DHT: no value holds more entries than its cap, however many peers could write it."""
    import asyncio

    from seedswarm.peer.dht import SwarmDHT
    from seedswarm.peer.identity import load_identity
    from seedswarm.protocol.directory import (ANNOUNCERS, BUCKET_CAP, DIRECTORY_KEY, MEMBER_BUCKETS, SPEC_COPIES,
                                              member_key, spec_key)

    steps = 120
    common = ("--min-peers", "8")
    first = peer(tiny_swarm, tmp_path, "p00", 0, *common, steps=steps)
    maddrs = first.maddrs()
    founders = [first] + [peer(tiny_swarm, tmp_path, f"p{i:02d}", i % 3, "--initial-peers", *maddrs, *common,
                               "--data-seed", str(i), steps=steps) for i in range(1, 12)]
    everyone = list(founders)
    reader = None
    try:
        first.wait_for_step(32, timeout=600)  # a voted checkpoint exists (every 10, votes settle 9 steps later)
        joiners = [peer(tiny_swarm, tmp_path, f"j{how}", i, "--initial-peers", *maddrs, *common, "--join-by", how,
                        "--data-seed", str(20 + i), steps=steps) for i, how in enumerate(("checkpoint", "replay"))]
        everyone += joiners
        deadline = time.monotonic() + 600
        while not all(events(j, "joined") for j in joiners):
            assert time.monotonic() < deadline, "joiners did not join"
            assert all(j.proc.poll() is None for j in joiners), "".join(j.output()[-3000:] for j in joiners)
            for p in everyone:
                p.track_children()
            time.sleep(0.5)
        assert first.step() < steps - 20, f"the swarm reached {first.step()} before the joiners joined: raise `steps`"

        # a stranger reads every key the swarm writes: each value is bounded by its cap
        swarm = bytes.fromhex(first.events()[0]["swarm_id"])
        ident = load_identity(tmp_path / "reader.key")
        reader = SwarmDHT.start(ident.signer, str(ident.path), initial_peers=maddrs)
        keys = [spec_key(swarm), DIRECTORY_KEY, *(member_key(swarm, b) for b in range(MEMBER_BUCKETS))]
        found = asyncio.run(reader._read(keys, latest=True))
        specs = [o for o, e in found[spec_key(swarm)] if e.kind == "spec"]
        announcers = [o for o, e in found[DIRECTORY_KEY] if e.kind == "swarm" and e.swarm == swarm]
        buckets = [len(found[k]) for k in keys[2:]]
        print(f"DHT entries: spec {len(specs)}, directory {len(announcers)}, fullest member bucket {max(buckets)}, "
              f"members {sum(buckets)}")
        assert 1 <= len(specs) <= SPEC_COPIES, specs
        assert 1 <= len(announcers) <= ANNOUNCERS, announcers
        assert max(buckets) <= BUCKET_CAP and sum(buckets) >= 8

        founders[5].stop()   # SIGTERM: says goodbye
        founders[6].kill()   # SIGKILL: no goodbye
        survivors = [p for p in everyone if p not in (founders[5], founders[6])]
        summaries = finish(survivors)
    finally:
        if reader is not None:
            reader.shutdown()
        for p in everyone:
            p.stop()

    assert founders[5].proc.returncode in (0, 130, -15), founders[5].output()[-3000:]
    digests = {s["digest"] for s in summaries}
    assert len(digests) == 1, summaries
    assert all(s["step"] == steps for s in summaries)
    # the checkpoint joiner installed a checkpoint its peers vouched for, unless it met the
    # swarm only after entering (then it caught up by records, as the replay joiner does)
    if events(joiners[0], "joining"):
        assert events(joiners[0], "checkpoint_installed"), "the checkpoint joiner installed a checkpoint"
    assert not events(joiners[1], "checkpoint_installed")
    ledgers = [ledger_of(tmp_path, p.name) for p in survivors]
    low = min((e["step"] for e in events(joiners[0], "checkpoint_installed")), default=0)
    assert all(applied(led, steps)[low:] == applied(ledgers[0], steps)[low:] for led in ledgers)

    # base weights + the (signed, verified) ledger reproduce the swarm's weights, and they learned something
    spec = decode_ledger((tmp_path / "p00" / "ledger.ssl").read_bytes())[0]
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_swarm / "tiny")
    task = build_task(spec.task, tokenizer)
    test = read_jsonl(tiny_swarm / "test.jsonl")
    before = evaluate(transformers.AutoModel.from_pretrained(tiny_swarm / "tiny").eval(), task, test)["loss"]
    trained = replay(transformers.AutoModel.from_pretrained(tiny_swarm / "tiny").eval(), spec, ledgers[0])
    assert weight_digest(trained) == digests.pop()
    assert evaluate(trained, task, test)["loss"] < before

    # nothing outlives its peer, the SIGKILLed one included
    orphans = {p.name: p.orphans() for p in everyone}
    assert all(not o for o in orphans.values()), orphans
    assert founders[6].children, "the harness saw the killed peer's DHT and p2pd processes"
