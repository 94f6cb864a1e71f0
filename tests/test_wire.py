"""The wire meter reads the kernel's per-socket TCP counters of the peer's p2pd."""

import subprocess

from seedswarm.peer.wire import WireMeter

SS = """ESTAB {q} 0 127.0.0.1:4001 127.0.0.1:5001 users:(("p2pd",pid=42,fd=9))
\t cubic rtt:0.1 bytes_sent:{a} bytes_acked:{a} bytes_received:{b} segs_out:10
ESTAB 0 0 127.0.0.1:4002 127.0.0.1:5002 users:(("p2pd",pid=7,fd=9))
\t cubic bytes_sent:999999 bytes_received:999999
"""


def test_counts_only_its_own_sockets_and_never_twice(monkeypatch):
    outputs = iter([SS.format(q=0, a=100, b=50), SS.format(q=1234, a=300, b=80), SS.format(q=0, a=300, b=80).split("ESTAB")[0]])
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/ss")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, next(outputs), ""))
    meter = WireMeter([42])
    assert meter.read() == (100, 50)
    assert meter.read() == (300, 80)   # a busy socket (non-zero Recv-Q) is the same socket
    assert meter.read() == (300, 80)   # a closed socket keeps its last count


def test_unavailable_without_ss(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert WireMeter([42]).read() is None
