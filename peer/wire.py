"""Wire bytes measured at the transport: the TCP payload of this peer's p2pd connections.

Everything a peer exchanges with the swarm (DHT RPCs, signatures, libp2p's encryption and
multiplexing, checkpoint streams) crosses the sockets of its p2pd daemon, so the kernel's
per-socket counters (``ss -tin``: bytes_sent / bytes_received) are the honest total. Closed
connections keep counting through the last value seen. Where ``ss`` (iproute2) is missing
the meter reports ``None`` rather than a made-up number.
"""

from __future__ import annotations

import re
import shutil
import subprocess

_PID = re.compile(r"pid=(\d+),")
_SENT = re.compile(r"bytes_sent:(\d+)")
_RECV = re.compile(r"bytes_received:(\d+)")


class WireMeter:
    def __init__(self, pids: list[int]) -> None:
        self.pids = set(pids)
        self._last: dict[str, tuple[int, int]] = {}
        self._closed = (0, 0)
        self.available = shutil.which("ss") is not None and bool(self.pids)

    def read(self) -> tuple[int, int] | None:
        """(bytes sent, bytes received) so far, or None if unmeasurable here."""
        if not self.available:
            return None
        try:
            out = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        current: dict[str, tuple[int, int]] = {}
        lines = out.splitlines()
        for i, line in enumerate(lines):
            pids = {int(p) for p in _PID.findall(line)}
            if not pids & self.pids:
                continue
            sock = " ".join(line.split()[3:5])  # local and peer address (after state, Recv-Q, Send-Q)
            stats = line if _SENT.search(line) else (lines[i + 1] if i + 1 < len(lines) else "")
            sent, recv = _SENT.search(stats), _RECV.search(stats)
            current[sock] = (int(sent.group(1)) if sent else 0, int(recv.group(1)) if recv else 0)
        gone = set(self._last) - set(current)
        self._closed = (
            self._closed[0] + sum(self._last[s][0] for s in gone),
            self._closed[1] + sum(self._last[s][1] for s in gone),
        )
        self._last = current
        return (self._closed[0] + sum(v[0] for v in current.values()), self._closed[1] + sum(v[1] for v in current.values()))
