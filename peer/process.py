"""Child processes that die with their peer.

hivemind runs its DHT in a forked child process, which starts the Go ``p2pd`` daemon. If
the peer is killed (SIGKILL, OOM killer) both keep running, holding ports and the peer's
identity. ``ReapedDHT`` asks the kernel (``PR_SET_PDEATHSIG``) to SIGKILL the DHT process
when the peer dies, and the same for p2pd when the DHT process dies, so nothing outlives
the peer. p2pd runs in its own process group, so a Ctrl-C at the terminal reaches only the
peer (hivemind's DHT process ignores SIGINT), which then shuts everything down in order. On systems without prctl (macOS) this is a no-op and hivemind's own shutdown
still runs on a normal exit.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys

# hivemind's MPFuture shares memory through torch's "file_system" strategy by default, which
# starts a torch_shm_manager daemon that can outlive a killed peer; file descriptors need none.
os.environ.setdefault("HIVEMIND_MEMORY_SHARING_STRATEGY", "file_descriptor")

import hivemind  # noqa: E402

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent exits (Linux only)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _reaped_daemon() -> None:
    """In the p2pd child before exec: die with the DHT process, and leave the terminal's
    process group. Ctrl-C sends SIGINT to the whole foreground group; p2pd would quit on it at
    once (hivemind relays its "accept ... use of closed network connection" ERROR, then times
    out shutting the DHT down: a WARN) while the peer is still leaving the swarm. Out of the
    group, p2pd is stopped by hivemind's own shutdown (SIGTERM), or by PDEATHSIG."""
    die_with_parent()
    os.setpgid(0, 0)


class ReapedDHT(hivemind.DHT):
    """hivemind.DHT whose process, and the p2pd it starts, die with the peer that created it.

    Create it from a thread that lives as long as the peer (the main thread, or the peer's
    event-loop thread): Linux delivers the signal when the creating thread exits.
    ``p2pd_args``: extra p2pd flags hivemind's P2P.create has no parameter for.
    """

    def __init__(self, *args, p2pd_args: tuple[str, ...] = (), **kwargs) -> None:
        self._p2pd_args = tuple(p2pd_args)  # set before hivemind forks the DHT process
        super().__init__(*args, **kwargs)

    def run(self) -> None:
        die_with_parent()
        if os.getppid() == 1:  # the parent died between fork and prctl
            os._exit(1)
        spawn = asyncio.subprocess.create_subprocess_exec

        extra = self._p2pd_args

        async def spawn_reaped(*args, **kwargs):
            kwargs.setdefault("preexec_fn", _reaped_daemon)
            if extra and args and os.path.basename(str(args[0])) == "p2pd":
                args = (*args, *extra)
            return await spawn(*args, **kwargs)

        asyncio.subprocess.create_subprocess_exec = spawn_reaped  # only inside this child process
        super().run()


def descendants(pid: int) -> list[int]:
    """Live (non-zombie) descendant pids of ``pid``, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def is_alive(pid: int) -> bool:
    """True for a running process; False for a gone one or a zombie awaiting its reaper."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
