"""Peers behind home routers: every training peer behind its own NAT, only relays public.

Built in network namespaces (tests/netlab.py): two public hosts each run `seedswarm bootstrap`
(a DHT node and a circuit relay), two homes sit behind masquerading routers that let
nobody dial in, and every home has the same private address. Checks what a volunteer relies
on: two NATed peers train together through the relays, the relay they used dies and they
move to the other one, and both replicas end identical with no record lost. (A newcomer
joining by checkpoint through relays is exercised by hand, not here: see the issue notes.) Also shows that nothing assumes one host: announced addresses,
bootstrap lists and `seedswarm swarms` across namespaces. Skipped, saying why, where
namespaces cannot be built (not root, no ip/nft)."""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netlab import LabUnavailable, NatLab
from seedswarm.peer.demo import _steady_wire
from seedswarm.peer.launcher import PeerProcess
from seedswarm.protocol import Ledger, SwarmSpec, decode_ledger

pytestmark = pytest.mark.slow

STEPS = 60
PORT = 31337


@pytest.fixture
def lab():
    try:
        lab = NatLab.create(publics=2, homes=2)
    except LabUnavailable as exc:
        pytest.skip(f"cannot build network namespaces here: {exc}")
    yield lab
    lab.destroy()


def bootstrap(lab: NatLab, host: str, run: Path, *initial: str) -> tuple[subprocess.Popen, str]:
    """`seedswarm bootstrap` on a public host, announcing its public address; -> (process, maddr)."""
    address = lab.addresses[host]
    log = run / f"{host}.out"
    proc = subprocess.Popen([*lab.prefix(host), sys.executable, "-m", "seedswarm.peer.cli", "bootstrap",
                             "--host-maddrs", f"/ip4/0.0.0.0/tcp/{PORT}", "--announce-maddrs", f"/ip4/{address}/tcp/{PORT}",
                             "--identity-path", str(run / f"{host}.key"), *(["--initial-peers", *initial] if initial else [])],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = re.search(rf"/ip4/{re.escape(address)}/tcp/{PORT}/p2p/\w+", log.read_text())
        if found:
            return proc, found.group(0)
        assert proc.poll() is None, log.read_text()
        time.sleep(0.2)
    raise TimeoutError(log.read_text())


def ledger_of(run: Path, name: str) -> Ledger:
    return Ledger(decode_ledger((run / name / "ledger.ssl").read_bytes())[1])


def test_peers_behind_separate_nats_train_through_relays_and_survive_losing_one(lab, tiny_swarm, tmp_path):
    boots = []
    peers: list[PeerProcess] = []
    try:
        boot1, relay1 = bootstrap(lab, "pub1", tmp_path)
        boots.append(boot1)
        boot2, relay2 = bootstrap(lab, "pub2", tmp_path, relay1)
        boots.append(boot2)

        # the tiny model seals a step every ~0.3 s, while re-dialing through another relay takes
        # seconds: the widest late window (64 steps) lets records held up by that still count (at the
        # seconds per step of real models, the default 8 covers it)
        spec = dataclasses.replace(SwarmSpec.from_json((tiny_swarm / "spec.json").read_text()), late_window=64)
        (tmp_path / "spec.json").write_text(spec.to_json())

        def peer(name: str, home: str, data: int, *extra: str) -> PeerProcess:
            args = ["--swarm-spec", str(tmp_path / "spec.json"), "--steps", str(STEPS), "--checkpoint-every", "20",
                    "--data", str(tiny_swarm / f"data{data}.jsonl"), "--checkpoint-dir", str(tmp_path / name),
                    "--host-maddrs", "/ip4/0.0.0.0/tcp/0", "--initial-peers", relay1, relay2, *extra]
            return PeerProcess(name, args, tmp_path, prefix=lab.prefix(home))

        a = peer("a", "home1", 0, "--min-peers", "2")
        b = peer("b", "home2", 1, "--min-peers", "2")
        peers += [a, b]
        for p in (a, b):
            started = next(e for e in _wait_events(p, "started"))
            assert started["reach"] == "private", started  # no public address of its own: behind NAT
            assert set(started["relays"]) == {relay1, relay2}

        a.wait_for_step(10, timeout=600)
        # the directory works across hosts: a stranger on a public host lists the swarm
        listing = lab.run("pub2", [sys.executable, "-m", "seedswarm.peer.cli", "swarms", "--initial-peers", relay2,
                                   "--json"], capture_output=True, text=True, timeout=180)
        assert listing.returncode == 0, listing.stderr
        assert spec.swarm_id.hex() in listing.stdout, listing.stdout

        a.wait_for_step(20, timeout=600)
        boot1.send_signal(signal.SIGKILL)  # the first relay (and DHT bootstrap) dies mid-run
        boot1.wait()
        assert a.step() < STEPS - 10, "the swarm should still be training when the relay dies"

        for p in peers:
            assert p.wait(900) == 0, p.output()[-3000:]
        summaries = [p.summary() for p in peers]
    finally:
        for p in peers:
            p.stop()
        for proc in boots:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()

    assert len({s["digest"] for s in summaries}) == 1, summaries
    assert all(s["step"] == STEPS for s in summaries)
    ledgers = {n: ledger_of(tmp_path, n) for n in ("a", "b")}
    applied = {n: [[r.rid for r in led.applicable(s)] for s in range(STEPS)] for n, led in ledgers.items()}
    assert applied["a"] == applied["b"]  # no record lost anywhere
    machines = {n: _machine(p) for n, p in zip("ab", peers)}
    # each ledger holds both peers' records: they trained together the whole run (a record that
    # missed the re-dial after the relay died may be missing at a step or two, the same in both)
    for who in "ab":
        authored = sum(machines[who] in {r.machine for r in ledgers["a"].applicable(s)} for s in range(STEPS))
        assert authored >= 0.9 * STEPS, (who, authored)
    # after the first relay died, each NATed peer was left with the other one
    for p in peers:
        relays = _wait_events(p, "relays", timeout=0)
        assert relays and relays[-1]["connected"] == [relay2.rsplit("/p2p/", 1)[1]], relays
    wire = _steady_wire(peers, spec.samples_per_step)
    print(json.dumps({"relayed_wire_bytes_per_gradient_steady": wire}))


def _machine(p: PeerProcess) -> bytes:
    from hivemind.p2p import PeerID

    return PeerID.from_base58(p.events()[0]["peer_id"]).to_bytes()


def _wait_events(p: PeerProcess, kind: str, timeout: float = 300) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in p.events() if e["event"] == kind]
        if found or time.monotonic() >= deadline:
            return found
        if p.proc.poll() is not None:
            raise RuntimeError(f"{p.name} exited:\n{p.output()[-3000:]}")
        time.sleep(0.2)
