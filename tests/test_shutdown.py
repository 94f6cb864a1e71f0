"""Ctrl-C is clean: a terminal's SIGINT (sent to the whole foreground process group) stops
`seedswarm bootstrap` and `seedswarm peer` without ERROR/WARN lines and leaves no process
behind (no DHT child, no p2pd)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seedswarm.peer.process import descendants, is_alive

pytestmark = pytest.mark.slow
EXE = str(Path(sys.executable).with_name("seedswarm"))


def start(args: list[str], tmp_path: Path) -> tuple[subprocess.Popen, Path, Path]:
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    # a session of its own: its process group plays the terminal's foreground group
    proc = subprocess.Popen([EXE, *args], stdout=out.open("w"), stderr=err.open("w"), start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return proc, out, err


def wait_until(proc: subprocess.Popen, ready, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"exited before {what}"
        assert time.monotonic() < deadline, f"no {what} in {timeout}s"
        time.sleep(0.2)


def ctrl_c(proc: subprocess.Popen, err: Path) -> list[int]:
    """SIGINT to the process group, as Ctrl-C does; returns the descendants still alive after."""
    children = descendants(proc.pid)
    assert children, "the command should have started its DHT process and p2pd"
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(60)
    deadline = time.monotonic() + 10
    alive = children
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if is_alive(p)]
    return alive


def noise(text: str) -> list[str]:
    return [line for line in text.splitlines() if "ERROR" in line or "WARN" in line or "Traceback" in line]


def test_ctrl_c_stops_bootstrap_quietly_with_nothing_left(tmp_path):
    proc, out, err = start(["bootstrap"], tmp_path)
    try:
        wait_until(proc, lambda: "--initial-peers /ip4/" in out.read_text(), "multiaddr")
        left = ctrl_c(proc, err)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, 130)
    assert noise(err.read_text()) == [], err.read_text()
    assert left == []
    assert "Ctrl-C" in out.read_text()  # it says how to stop it


def test_ctrl_c_stops_a_training_peer_quietly_with_nothing_left(tiny_swarm, tmp_path):
    log = tmp_path / "peer.jsonl"
    proc, out, err = start(["peer", "--swarm-spec", str(tiny_swarm / "spec.json"), "--data", str(tiny_swarm / "data0.jsonl"),
                            "--steps", "100000", "--checkpoint-dir", str(tmp_path / "ckpt"), "--json-log", str(log)], tmp_path)

    def training() -> bool:
        return log.exists() and any(json.loads(line).get("event") == "step" for line in log.read_text().splitlines()[:-1])

    try:
        wait_until(proc, training, "training step")
        left = ctrl_c(proc, err)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert noise(err.read_text()) == [], err.read_text()
    assert left == []
