"""The swarm page: the snapshot dict (observe.py), the web app over it (monitor.py), and
`seedswarm monitor` on a live 2-peer swarm, rendered by a real headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.utils import ValueWithExpiration, get_dht_time

from seedswarm.peer.launcher import PeerProcess
from seedswarm.peer.monitor import Poller, create_app, listen, serve
from seedswarm.peer.cli import main
from seedswarm.peer.observe import PEER_FIELDS, LossHistory, swarm_snapshot
from seedswarm.protocol import Signer
from seedswarm.protocol.directory import Announcement, MemberInfo

SWARM = bytes(range(32))
EXE = str(Path(sys.executable).with_name("seedswarm"))
OWNERS = [Signer(bytes([i + 1]) * 32) for i in range(3)]


class FakeDHT:
    """What swarm_snapshot needs of peer/dht.py's SwarmDHT: validated member entries and the directory."""

    def __init__(self, members: dict, directory: dict) -> None:
        self._members, self._directory = members, directory

    async def members(self, swarm: bytes):
        return dict(self._members) if swarm == SWARM else {}

    async def directory(self):
        return dict(self._directory)


def fake_swarm(steps=(3, 5), losses=(0.7, 0.5)) -> FakeDHT:
    a, b, hostile = OWNERS
    members = {}
    for signer, step, loss, name in zip((a, b), steps, losses, "ab"):
        members[signer.machine] = MemberInfo(step=step, status="training", name=name, loss=loss, sent=2048,
                                             received=4096, heals=1, reach="public", peers=2,
                                             suspects={hostile.machine.hex(): 3})
    members[hostile.machine] = MemberInfo(step=5, status="training", name="h", reach="private")
    return FakeDHT(members, {SWARM: Announcement("demo", "tiny", "label-prompts", max(steps), 3)})


def test_snapshot_lists_swarms_and_live_peers_in_its_documented_schema():
    dht = fake_swarm()
    history = LossHistory()
    listing = swarm_snapshot(dht, initial_peers=["/ip4/1.2.3.4/tcp/5/p2p/QmX"])
    assert listing["swarm"] is None and listing["version"] == 2
    [row] = listing["swarms"]
    assert row["swarm_id"] == SWARM.hex() and row["peers"] == 3 and row["step"] == 5 and row["name"] == "demo"
    assert row["join_command"] == f"seedswarm peer --swarm {SWARM.hex()} --initial-peers /ip4/1.2.3.4/tcp/5/p2p/QmX --data YOUR.jsonl"

    snap = swarm_snapshot(dht, SWARM.hex(), initial_peers=["/ip4/1.2.3.4/tcp/5/p2p/QmX"], history=history)
    assert json.loads(json.dumps(snap)) == snap  # JSON-serialisable as it is
    swarm = snap["swarm"]
    assert swarm["swarm_id"] == SWARM.hex() and swarm["step"] == 5 and swarm["name"] == "demo"
    by_name = {p["name"]: p for p in swarm["peers"]}
    for peer in swarm["peers"]:
        assert set(peer) == set(PEER_FIELDS)
    assert by_name["a"]["sent"] == 2048 and by_name["a"]["received"] == 4096 and by_name["a"]["heals"] == 1
    assert by_name["a"]["reachable"] is True and by_name["h"]["reachable"] is False
    assert by_name["h"]["refused_by_others"] == 6 and by_name["a"]["refused_by_others"] == 0  # the hostile peer shows
    assert {n: (p["step"], p["loss"]) for n, p in by_name.items() if n != "h"} == {"a": (3, 0.7), "b": (5, 0.5)}
    assert swarm["join_command"] == row["join_command"]

    # the loss curve grows as member entries move on
    swarm_snapshot(fake_swarm(steps=(6, 6), losses=(0.4, 0.2)), SWARM, history=history)
    curve = history.series(SWARM.hex())
    assert [p["step"] for p in curve] == [3, 5, 6]
    assert curve[-1]["peers"] == 2 and abs(curve[-1]["loss"] - 0.3) < 1e-9


def test_web_app_serves_the_page_and_the_snapshot_as_json():
    calls = []

    def snapshot(swarm):
        calls.append(swarm)
        return {"version": 1, "time": 0.0, "swarms": [], "swarm": None, "asked": swarm}

    sock = listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    thread = threading.Thread(target=serve, args=(create_app(snapshot, refresh=0.5), sock), daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    page = _get(base + "/")
    assert "<title>seedswarm monitor</title>" in page and '"refresh_ms": 500' in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "the page must load nothing from elsewhere"
    assert json.loads(_get(base + "/api/snapshot"))["asked"] is None
    assert json.loads(_get(base + f"/api/snapshot?swarm={SWARM.hex()}"))["asked"] == SWARM.hex()
    with pytest.raises(urllib.error.HTTPError) as bad:
        _get(base + "/api/snapshot?swarm=nope")
    assert bad.value.code == 400 and calls == [None, SWARM.hex()]


def test_poller_reuses_a_fresh_snapshot_and_refreshes_a_stale_one():
    taken = []
    poller = Poller(lambda swarm: taken.append(swarm) or {"swarms": [], "n": len(taken)}, interval=60, max_age=60)
    assert poller(None)["n"] == 1 and poller(None)["n"] == 1 and taken == [None]
    poller.max_age = 0
    time.sleep(0.01)
    assert poller(None)["n"] == 2


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read().decode()


# --- end to end: real peers, `seedswarm monitor`, headless Chromium --------------------------------
def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium on this machine: `apt-get install -y chromium` (Debian; .ci/run installs it)")


def browse(browser: str, url: str, profile: str, *extra: str, budget_ms: int = 4000, timeout: float = 60) -> subprocess.CompletedProcess:
    """Headless Chromium: load the page, let its scripts run for ``budget_ms`` of virtual time."""
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check", "--mute-audio",
           f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def rendered_peers(dom: str) -> dict[str, int]:
    """{name: step} of the rows of the page's peers table, read from the dumped DOM."""
    table = re.search(r'<table id="peers">.*?</table>', dom, re.S)
    rows = re.findall(r'<tr data-peer-id="[^"]+">(.*?)</tr>', table.group(0) if table else "", re.S)
    out = {}
    for row in rows:
        name = re.search(r'<td class="name">([^<]*)</td>', row)
        step = re.search(r'<td class="num step">(\d+)</td>', row)
        if name and step:
            out[name.group(1)] = int(step.group(1))
    return out


@pytest.mark.slow
def test_monitor_page_shows_a_live_two_peer_swarm_in_a_real_browser(tiny_swarm, tmp_path):
    browser = chromium()
    profile = tempfile.mkdtemp(prefix="seedswarm-chromium-")
    probe = browse(browser, "data:text/html,<p id=x>ok</p>", profile, "--dump-dom")
    if 'id="x">ok' not in probe.stdout:
        pytest.skip(f"Chromium is installed but cannot run headless here: {probe.stderr[-500:]}")

    def peer(name: str, data: int, *extra: str) -> PeerProcess:
        return PeerProcess(name, ["--swarm-spec", str(tiny_swarm / "spec.json"), "--steps", "100000", "--min-peers", "2",
                                  "--data", str(tiny_swarm / f"data{data}.jsonl"), "--checkpoint-dir", str(tmp_path / name),
                                  *extra], tmp_path)

    a = peer("a", 0)
    b = monitor = None
    try:
        maddrs = a.maddrs()
        b = peer("b", 1, "--initial-peers", *maddrs)
        a.wait_for_step(3)
        out = (tmp_path / "monitor.out").open("w+")
        err = tmp_path / "monitor.err"
        monitor = subprocess.Popen([EXE, "monitor", "--initial-peers", *maddrs, "--port", "0", "--refresh", "0.5"],
                                   stdout=out, stderr=err.open("w"), start_new_session=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        url = _wait_for(lambda: re.search(r"open (http://\S+/)", Path(out.name).read_text()), monitor, "monitor URL").group(1)

        # the page, as a browser renders it: both peers with their names and steps, the swarm, the join command
        def both_peers_rendered():
            dom = browse(browser, url, profile, "--dump-dom").stdout
            peers = rendered_peers(dom)
            counted = re.search(r'<td class="num peers">2</td>', dom)  # the directory, refreshed within 10 s
            return (dom, peers) if {"a", "b"} <= set(peers) and min(peers.values()) >= 1 and counted else None

        dom, peers = _wait_for(both_peers_rendered, monitor, "both peers on the page, and counted in the swarm list", timeout=120)
        swarm_id = a.events()[0]["swarm_id"]
        assert f'data-swarm-id="{swarm_id}"' in dom
        assert f"seedswarm peer --swarm {swarm_id} --initial-peers {maddrs[0]}" in dom
        assert 'id="loss"' in dom

        # steps go on: a later render shows the peers further along, and the loss curve has points
        a.wait_for_step(max(peers.values()) + 5)
        def further_along():
            dom = browse(browser, url, profile, "--dump-dom").stdout
            steps, points = rendered_peers(dom), re.search(r'data-points="(\d+)"', dom)
            moved = {"a", "b"} <= set(steps) and min(steps.values()) > min(peers.values())
            return dom if moved and points and int(points.group(1)) >= 2 else None

        _wait_for(further_along, monitor, "later steps and a loss curve")

        shot = tmp_path / "monitor.png"
        browse(browser, url, profile, f"--screenshot={shot}", "--window-size=1280,1000", "--hide-scrollbars")
        assert shot.read_bytes()[:4] == b"\x89PNG"
        if os.environ.get("SEEDSWARM_ARTIFACTS"):
            Path(os.environ["SEEDSWARM_ARTIFACTS"]).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(os.environ["SEEDSWARM_ARTIFACTS"]) / "monitor.png")

        # Ctrl-C stops the monitor quietly
        os.killpg(monitor.pid, signal.SIGINT)
        assert monitor.wait(60) in (0, 130)  # uvicorn re-raises the SIGINT after its graceful stop
        noise = [line for line in err.read_text().splitlines() if "ERROR" in line or "WARN" in line or "Traceback" in line]
        assert noise == [], err.read_text()
    finally:
        if monitor is not None and monitor.poll() is None:
            monitor.kill()
        for p in (a, b):
            if p is not None:
                p.stop()
        shutil.rmtree(profile, ignore_errors=True)


def _wait_for(check, proc: subprocess.Popen, what: str, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert proc.poll() is None, f"the monitor exited before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout}s"
        time.sleep(0.5)


def test_status_prints_each_peers_reachability_and_relay(monkeypatch, capsys):
    """`seedswarm status`: public, relayed (and through which relay) or unreachable, per peer."""
    import contextlib

    from seedswarm.peer import commands

    dht = fake_swarm()
    relayed = Signer(bytes([9]) * 32)
    dht._members[relayed.machine] = MemberInfo(step=4, status="training", name="home", reach="relayed",
                                               relay="12D3KooWHLxB3PmtELC8a5exz7xkJEhQG3fNe6mczijmt57hdhk2")
    monkeypatch.setattr(commands, "_client_dht", lambda peers: contextlib.nullcontext(dht))
    assert main(["status", "--initial-peers", "/ip4/1.2.3.4/tcp/5/p2p/QmX", "--swarm", SWARM.hex()]) == 0
    lines = {line.split()[1]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert lines["home"].endswith("relayed via relay 12D3KooWHLxB3Pmt..")
    assert lines["a"].endswith("public") and lines["h"].endswith("unreachable")
