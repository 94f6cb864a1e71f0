"""Real peer processes on loopback: joining, leaving, crashing, resuming, hostile peers.

Each test starts `seedswarm peer` processes (own DHT node and p2pd each) with a tiny random
BERT so that steps are fast, and checks what users rely on: replicas end bit-identical, no
process outlives its peer, bad actors change nothing.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import transformers

from seedswarm.model import build_task, evaluate, read_jsonl
from seedswarm.model.digest import weight_digest
from seedswarm.model.replica import replay
from seedswarm.peer.launcher import PeerProcess
from seedswarm.protocol import Record, decode_ledger

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tiny_swarm):
    """A tiny model folder, a swarm spec using it, and disjoint data shards (conftest)."""
    return tiny_swarm


def peer(setup, run: Path, name: str, data: int, *extra: str, steps: int) -> PeerProcess:
    args = ["--swarm-spec", str(setup / "spec.json"), "--steps", str(steps), "--checkpoint-every", "10",
            "--data", str(setup / f"data{data}.jsonl"), "--checkpoint-dir", str(run / name), *extra]
    return PeerProcess(name, args, run)


def finish(peers: list[PeerProcess], timeout: float = 600) -> list[dict]:
    summaries = []
    try:
        for p in peers:
            assert p.wait(timeout) == 0, p.output()[-3000:]
            summaries.append(p.summary())
    finally:
        for p in peers:
            p.stop()
    return summaries


def ledger_of(run: Path, name: str) -> list[Record]:
    spec, records, torn = decode_ledger((run / name / "ledger.ssl").read_bytes())
    return sorted(records, key=lambda r: r.order_key)


def joined(p: PeerProcess) -> bool:
    return any(e["event"] == "joined" for e in p.events())


def test_join_by_checkpoint_and_by_replay_survive_a_crash_and_end_identical(setup, tmp_path):
    steps = 400
    first = peer(setup, tmp_path, "a", 0, "--min-peers", "3", steps=steps)
    maddrs = first.maddrs()
    crew = [first] + [peer(setup, tmp_path, n, i, "--initial-peers", *maddrs, "--min-peers", "3", steps=steps)
                      for n, i in (("b", 1), ("c", 2))]
    everyone = list(crew)
    try:
        first.wait_for_step(12)  # a checkpoint exists (every 10 steps)
        by_ckpt = peer(setup, tmp_path, "d", 0, "--initial-peers", *maddrs, "--join-by", "checkpoint", "--data-seed", "7", steps=steps)
        by_replay = peer(setup, tmp_path, "e", 1, "--initial-peers", *maddrs, "--join-by", "replay", "--data-seed", "8", steps=steps)
        everyone += [by_ckpt, by_replay]
        deadline = time.monotonic() + 300
        while not (joined(by_ckpt) and joined(by_replay)):
            assert time.monotonic() < deadline, "joiners did not join"
            assert by_ckpt.proc.poll() is None and by_replay.proc.poll() is None, by_ckpt.output() + by_replay.output()
            for p in everyone:
                p.track_children()
            time.sleep(0.2)
        assert first.step() < steps - 20, f"the swarm reached {first.step()} before the joiners joined: raise `steps`"
        first.wait_for_step(first.step() + 5)
        crew[2].kill()  # SIGKILL: no goodbye
        survivors = [first, crew[1], by_ckpt, by_replay]
        summaries = finish(survivors)
    finally:
        for p in everyone:
            p.stop()

    digests = {s["digest"] for s in summaries}
    assert len(digests) == 1, summaries
    assert all(s["step"] == steps for s in summaries)
    events = {p.name: [e["event"] for e in p.events()] for p in everyone}
    assert "joined" in events["d"] and "joined" in events["e"]
    # the checkpoint joiner downloaded a checkpoint; the replay joiner rebuilt from step 0
    assert (tmp_path / "d").glob("ckpt-*.safetensors")
    ledgers = [ledger_of(tmp_path, p.name) for p in survivors]
    assert all(ledger == ledgers[0] for ledger in ledgers)

    # base weights + the ledger reproduce the swarm's weights, and they learned something
    spec = decode_ledger((tmp_path / "a" / "ledger.ssl").read_bytes())[0]
    tokenizer = transformers.AutoTokenizer.from_pretrained(setup / "tiny")
    task = build_task(spec.task, tokenizer)
    test = read_jsonl(setup / "test.jsonl")
    base = transformers.AutoModel.from_pretrained(setup / "tiny").eval()
    before = evaluate(base, task, test)["loss"]
    trained = replay(transformers.AutoModel.from_pretrained(setup / "tiny").eval(), spec, ledgers[0])
    assert weight_digest(trained) == digests.pop()
    after = evaluate(trained, task, test)["loss"]
    assert after < before, (before, after)

    # nothing outlives its peer, the SIGKILLed one included
    orphans = {p.name: p.orphans() for p in everyone}
    assert all(not o for o in orphans.values()), orphans
    assert crew[2].children, "the harness saw the killed peer's DHT and p2pd processes"


def test_a_killed_peer_resumes_with_nothing_lost(setup, tmp_path):
    steps = 500  # enough that the survivor is still training when the restarted peer is back
    a = peer(setup, tmp_path, "a", 0, "--min-peers", "2", steps=steps)
    maddrs = a.maddrs()
    b = peer(setup, tmp_path, "b", 1, "--initial-peers", *maddrs, "--min-peers", "2", steps=steps)
    restarted = None
    try:
        b.wait_for_step(40)
        b.kill()
        killed_at = b.step()
        restarted = PeerProcess("b2", ["--resume", "--checkpoint-dir", str(tmp_path / "b"), "--steps", str(steps),
                                       "--data", str(setup / "data1.jsonl"), "--initial-peers", *maddrs], tmp_path)
        summaries = finish([a, restarted])
    finally:
        for p in (a, b, restarted):
            if p is not None:
                p.stop()
    assert summaries[0]["digest"] == summaries[1]["digest"]
    assert summaries[0]["rejected"] == 0 and summaries[1]["rejected"] == 0  # no reused sample counters
    assert any(e["event"] == "resumed" and e["step"] > 0 for e in restarted.events())
    assert summaries[1]["peer_id"] == b.events()[0]["peer_id"]  # same identity
    ledger_a, ledger_b = ledger_of(tmp_path, "a"), ledger_of(tmp_path, "b")
    assert ledger_a == ledger_b
    from hivemind.p2p import PeerID

    machine_b = PeerID.from_base58(summaries[1]["peer_id"]).to_bytes()
    samples = [s for r in ledger_b if r.machine == machine_b for s in r.samples]
    assert len(samples) == len(set(samples))  # every perturbation seed used once, across the crash
    assert any(r.machine == machine_b and r.step < killed_at for r in ledger_b)
    assert any(r.machine == machine_b and r.step > killed_at + 5 for r in ledger_b)
    assert {r.step for r in ledger_b} == set(range(steps))


def test_a_stock_hivemind_dht_can_be_the_only_bootstrap(setup, tmp_path):
    exe = Path(sys.executable).with_name("hivemind-dht")
    boot = subprocess.Popen([str(exe), "--host_maddrs", "/ip4/127.0.0.1/tcp/0"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        maddr = None
        deadline = time.monotonic() + 60
        while maddr is None and time.monotonic() < deadline:
            line = boot.stdout.readline()
            found = re.search(r"(/ip4/127\.0\.0\.1/tcp/\d+/p2p/\w+)", line)
            maddr = found.group(1) if found else None
        assert maddr, "hivemind-dht printed no multiaddr"
        peers = [peer(setup, tmp_path, n, i, "--initial-peers", maddr, "--min-peers", "2", steps=20) for n, i in (("a", 0), ("b", 1))]
        summaries = finish(peers)
    finally:
        boot.terminate()
        boot.wait(20)
    assert summaries[0]["digest"] == summaries[1]["digest"]
    assert summaries[0]["ledger_records"] == 40


def test_forged_malformed_and_oversized_values_are_rejected(setup, tmp_path):
    from hivemind import DHT
    from hivemind.dht.crypto import RSASignatureValidator
    from hivemind.p2p import P2P, PeerID
    from hivemind.utils import get_dht_time

    from seedswarm.peer.checkpoint import push_stream
    from seedswarm.peer.dhtschema import encode_record, pack, peers_key, step_key
    from seedswarm.peer.identity import load_identity

    steps = 150
    a = peer(setup, tmp_path, "a", 0, "--min-peers", "2", steps=steps)
    maddrs = a.maddrs()
    b = peer(setup, tmp_path, "b", 1, "--initial-peers", *maddrs, "--min-peers", "2", steps=steps)
    b.maddrs()
    honest = {a.events()[0]["peer_id"], b.events()[0]["peer_id"]}
    a.wait_for_step(5)
    swarm = bytes.fromhex(a.events()[0]["swarm_id"])

    hostile_id = load_identity(tmp_path / "hostile.key")
    # a node without seedswarm's validators: it stores whatever it is told, as an attacker would
    dht = DHT(initial_peers=maddrs, identity_path=str(hostile_id.path), start=True,
              record_validators=[RSASignatureValidator(hostile_id.private_key)])
    mine = RSASignatureValidator(hostile_id.private_key).local_public_key
    victims = [subkey for subkey in dht.get(peers_key(swarm), latest=True).value]
    victim_machine = PeerID.from_base58(sorted(honest)[0]).to_bytes()
    attempts, last_attack_step = 0, steps

    async def attack() -> tuple[int, int]:
        count = 0
        p2p = await dht.replicate_p2p()
        deadline = time.monotonic() + 20
        while count < 10 or (time.monotonic() < deadline and a.step() < steps - 10):  # two rounds at least
            t = a.step()
            forged = Record(step=t, machine=victim_machine, first_sample=10**9 + count, scale_exp=0, grads=b"\x7f")
            attacks = [
                (victims[0], encode_record(swarm, forged)),                                  # another's subkey, no signature
                (mine, encode_record(swarm, forged)),                                        # signed by me, in another's name
                (mine, pack("rec", swarm, b"not a record")),                                 # malformed
                (mine, pack("rec", swarm, Record(step=t + 1, machine=hostile_id.machine_id, first_sample=count,
                                                 scale_exp=0, grads=b"\x7f").encode())),    # under the wrong step key
                (mine, pack("rec", swarm, b"\x01" * 20_000)),                               # oversized record
            ]
            stores = [asyncio.wait_for(dht.store(step_key(swarm, t), value, get_dht_time() + 600, subkey=subkey,
                                                 return_future=True), 10) for subkey, value in attacks]
            await asyncio.gather(*stores, return_exceptions=True)
            count += len(attacks)
            for target in honest:  # pushes: a record in another's name, garbage, an unknown message
                for frame in (b"R" + forged.encode(), b"R" + b"\xff" * 50, b"Z" + b"\x00" * 8):
                    try:
                        _, _, writer = await asyncio.wait_for(
                            p2p.call_binary_stream_handler(PeerID.from_base58(target), push_stream(swarm)), 5)
                        await asyncio.wait_for(P2P.send_raw_data(frame, writer), 5)
                        writer.close()
                    except Exception:
                        pass
            await asyncio.sleep(0.3)
        return count, a.step()

    try:
        attempts, last_attack_step = asyncio.run(attack())
        summaries = finish([a, b])
    finally:
        dht.shutdown()
        a.stop()
        b.stop()
    assert attempts >= 10 and last_attack_step < steps  # every round of attacks hit a swarm still training
    assert summaries[0]["digest"] == summaries[1]["digest"]
    honest_machines = {PeerID.from_base58(p).to_bytes() for p in honest}
    for name in ("a", "b"):
        records = ledger_of(tmp_path, name)
        assert {r.machine for r in records} == honest_machines
        assert len(records) >= 2 * steps - 5  # a peer that catches up skips publishing for a step
    assert summaries[0]["rejected"] + summaries[1]["rejected"] > 0


def test_a_drifting_replica_heals_itself_from_the_majority(setup, tmp_path):
    steps = 200
    a = peer(setup, tmp_path, "a", 0, "--min-peers", "3", steps=steps)
    maddrs = a.maddrs()
    b = peer(setup, tmp_path, "b", 1, "--initial-peers", *maddrs, "--min-peers", "3", steps=steps)
    c = peer(setup, tmp_path, "c", 2, "--initial-peers", *maddrs, "--min-peers", "3", "--fault-corrupt-at", "12", steps=steps)
    a.wait_for_step(20)
    # while it trains, the swarm is visible to `seedswarm status` and `seedswarm swarms`
    exe = str(Path(sys.executable).with_name("seedswarm"))
    swarm = a.events()[0]["swarm_id"]
    status = subprocess.run([exe, "status", "--initial-peers", *maddrs, "--swarm", swarm, "--json"],
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)[swarm]
    assert {r["name"] for r in rows} >= {"a", "b", "c"} and all(r["step"] >= 1 for r in rows)
    listing = subprocess.run([exe, "swarms", "--initial-peers", *maddrs, "--json"], capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert any(row["swarm_id"] == swarm and row["name"] == "test" for row in json.loads(listing.stdout))
    summaries = finish([a, b, c])
    assert len({s["digest"] for s in summaries}) == 1
    assert summaries[2]["heals"] >= 1 and summaries[0]["heals"] == 0 and summaries[1]["heals"] == 0
    healed = [e for e in c.events() if e["event"] == "healed"]
    assert healed and healed[0]["ok"] is True
    assert ledger_of(tmp_path, "a") == ledger_of(tmp_path, "c")
