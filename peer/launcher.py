"""Peers as child processes on this machine: what the demo (and the tests) run.

Each ``PeerProcess`` is a real ``seedswarm peer`` process with its own DHT node and p2pd,
talking to the others over loopback exactly as peers on different machines would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .process import descendants, is_alive


class PeerProcess:
    def __init__(self, name: str, args: list[str], workdir: str | os.PathLike, env: dict | None = None,
                 prefix: list[str] | tuple[str, ...] = ()) -> None:
        """``prefix``: what runs the command, e.g. ``["ip", "netns", "exec", "home1"]`` (it must
        exec the command, so that the process is the peer)."""
        self.name = name
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{name}.out"
        self.json_log = self.workdir / f"{name}.jsonl"
        cmd = [*prefix, sys.executable, "-m", "seedswarm.peer.cli", "peer", "--name", name, "--json-log", str(self.json_log), "--quiet", *args]
        self._out = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                     start_new_session=True)
        self.children: set[int] = set()  # every descendant seen, to check none outlives the peer

    # --- what the peer reported ---
    def events(self) -> list[dict]:
        if not self.json_log.exists():
            return []
        out = []
        for line in self.json_log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass  # a line being written
        return out

    def step(self) -> int:
        steps = [e["step"] + 1 for e in self.events() if e["event"] == "step"]
        return max(steps, default=0)

    def maddrs(self, timeout: float = 120) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events():
                if e["event"] == "started":
                    return e["maddrs"]
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.output()}")
            self.track_children()
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} did not start in {timeout}s:\n{self.output()}")

    def summary(self) -> dict | None:
        for line in reversed(self.output().splitlines()):
            if line.startswith('{"event": "summary"'):
                return json.loads(line)
        return None

    def output(self) -> str:
        self._out.flush()
        return self.log_path.read_text(errors="replace")

    # --- process control ---
    def track_children(self) -> None:
        if self.proc.poll() is None:
            self.children.update(descendants(self.proc.pid))

    def wait_for_step(self, step: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while self.step() < step:
            self.track_children()
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited before step {step}:\n{self.output()[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not reach step {step} in {timeout}s (at {self.step()})")
            time.sleep(0.1)

    def wait(self, timeout: float = 600) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            self.track_children()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not finish in {timeout}s:\n{self.output()[-4000:]}")
            time.sleep(0.2)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: the peer gets no chance to clean up (its children must die on their own)."""
        self.track_children()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._out.close()

    def orphans(self, grace: float = 5.0) -> list[int]:
        """Descendants of this peer still alive ``grace`` seconds after it ended."""
        deadline = time.monotonic() + grace
        alive = [p for p in self.children if is_alive(p)]
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = [p for p in alive if is_alive(p)]
        return alive
