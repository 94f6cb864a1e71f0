"""Hole punching (DCUtR) between two peers behind separate NATs, in network namespaces.

The same topology as tests/test_nat.py, with what p2pd's hole punching needs to start:

- the "internet" on a range libp2p counts as public (tests/netlab.py: on the documentation
  range p2pd never sees a public address of its own, and DCUtR never starts);
- four public hosts, each a `seedswarm bootstrap` and relay: a peer's observed address counts
  for go-libp2p only once four peers on distinct IPs have reported it (identify's
  ActivationThresh), and only then does its DCUtR service start;
- routers that drop what comes in unasked (netlab's default now), as home routers do.

Checks that the two homes' links run over a direct (hole-punched) TCP connection, not a relay,
and that they train together and end bit-identical with every record."""

from __future__ import annotations

import dataclasses
import signal
import subprocess

import pytest

from netlab import LabUnavailable, NatLab
from seedswarm.peer.launcher import PeerProcess
from seedswarm.protocol import SwarmSpec
from test_nat import _machine, _wait_events, bootstrap, ledger_of

pytestmark = pytest.mark.slow

STEPS = 60
PUBLIC_INTERNET = "11.0.0"  # namespaces reach nothing outside: any range libp2p counts as public


@pytest.fixture
def lab():
    try:
        lab = NatLab.create(publics=4, homes=2, internet=PUBLIC_INTERNET)
    except LabUnavailable as exc:
        pytest.skip(f"cannot build network namespaces here: {exc}")
    yield lab
    lab.destroy()


def test_peers_behind_separate_nats_link_directly_by_hole_punching(lab, tiny_swarm, tmp_path):
    boots: list[subprocess.Popen] = []
    peers: list[PeerProcess] = []
    try:
        relays = []
        for k in range(1, 5):
            proc, maddr = bootstrap(lab, f"pub{k}", tmp_path, *relays[:1])
            boots.append(proc)
            relays.append(maddr)
        spec = dataclasses.replace(SwarmSpec.from_json((tiny_swarm / "spec.json").read_text()), late_window=64)
        (tmp_path / "spec.json").write_text(spec.to_json())

        def peer(name: str, home: str, data: int) -> PeerProcess:
            args = ["--swarm-spec", str(tmp_path / "spec.json"), "--steps", str(STEPS), "--min-peers", "2",
                    "--data", str(tiny_swarm / f"data{data}.jsonl"), "--checkpoint-dir", str(tmp_path / name),
                    "--host-maddrs", "/ip4/0.0.0.0/tcp/0", "--initial-peers", *relays, "--relays", relays[0]]
            return PeerProcess(name, args, tmp_path, prefix=lab.prefix(home))

        peers += [peer("a", "home1", 0), peer("b", "home2", 1)]
        for p in peers:
            started = _wait_events(p, "started")
            assert started and started[0]["reach"] == "private", started
        peers[0].wait_for_step(10, timeout=600)
        # the TCP connection the hole punch made: home1 (192.168.1.2) straight to home2's router
        router2 = lab.addresses["router2"]
        sockets = lab.run("home1", ["ss", "-tn"], capture_output=True, text=True).stdout
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

    links = {p.name: [e["via"] for e in p.events() if e["event"] == "link"] for p in peers}
    assert all(vias and vias[0] == "direct" for vias in links.values()), links
    assert any(f" {router2}:" in line for line in sockets.splitlines()), sockets
    assert len({s["digest"] for s in summaries}) == 1, summaries
    assert all(s["step"] == STEPS for s in summaries)
    ledgers = {n: ledger_of(tmp_path, n) for n in ("a", "b")}
    applied = {n: [[r.rid for r in led.applicable(s)] for s in range(STEPS)] for n, led in ledgers.items()}
    assert applied["a"] == applied["b"]
    machines = {n: _machine(p) for n, p in zip("ab", peers)}
    for who in "ab":  # both trained the whole run together
        authored = sum(machines[who] in {r.machine for r in ledgers["a"].applicable(s)} for s in range(STEPS))
        assert authored >= 0.9 * STEPS, (who, authored)
    print({"links": links, "home1_sockets_to_router2": [ln for ln in sockets.splitlines() if router2 in ln]})
