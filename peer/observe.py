"""What a swarm looks like from outside: one JSON-serialisable snapshot of the DHT.

``swarm_snapshot`` is the only thing ``seedswarm monitor`` (the web page), ``seedswarm
status`` and ``seedswarm swarms`` read. It is the one function to re-implement when the DHT
schema changes; everything downstream consumes the dict documented in its docstring.
"""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Iterable, Sequence

SNAPSHOT_VERSION = 2

#: fields every peer row carries (the snapshot schema); None where the swarm does not publish it
PEER_FIELDS = ("peer_id", "name", "status", "step", "loss", "step_time", "sent", "received", "heals", "late",
               "rejected", "refused_by_others", "reachable", "reach", "relay", "links", "checkpoint_step", "digest",
               "digest_step")


def join_command(swarm_id: str, initial_peers: Sequence[str]) -> str:
    """The command that joins swarm ``swarm_id`` through ``initial_peers``."""
    peers = " ".join(shlex.quote(p) for p in initial_peers) or "MULTIADDR"
    return f"seedswarm peer --swarm {swarm_id} --initial-peers {peers} --data YOUR.jsonl"


class LossHistory:
    """Training loss per step, as peers' heartbeats report it to one observer over time.

    Heartbeats carry only a peer's current step and its latest loss, so the curve is what
    this observer saw while it was running (a monitor started late sees the rest of the
    run only). Bounded: the latest ``max_steps`` steps of each swarm are kept."""

    def __init__(self, max_steps: int = 10_000) -> None:
        self.max_steps = max_steps
        self._seen: dict[str, dict[int, dict[str, float]]] = {}
        self._lock = threading.Lock()

    def update(self, swarm_id: str, peers: Iterable[dict]) -> None:
        with self._lock:
            steps = self._seen.setdefault(swarm_id, {})
            for peer in peers:
                if peer.get("loss") is not None and peer.get("status") == "training":
                    steps.setdefault(int(peer["step"]), {})[peer["peer_id"]] = float(peer["loss"])
            for old in sorted(steps)[: max(0, len(steps) - self.max_steps)]:
                del steps[old]

    def series(self, swarm_id: str) -> list[dict]:
        with self._lock:
            steps = self._seen.get(swarm_id, {})
            return [{"step": s, "loss": sum(v.values()) / len(v), "peers": len(v)} for s, v in sorted(steps.items())]


def swarm_snapshot(dht, swarm_id: str | bytes | None = None, *, initial_peers: Sequence[str] = (),
                   history: LossHistory | None = None) -> dict:
    """Every swarm announced in the DHT and, if ``swarm_id`` is given, a close look at that one.

    ``dht`` is a running hivemind DHT (a client node is enough) joined through
    ``initial_peers``, which also go into the join commands. ``history``, kept by the caller
    across calls, accumulates the loss curve. The dict (JSON-serialisable)::

        {
          "version": 1,
          "time": 1764000000.0,          # unix seconds when taken
          "swarms": [                    # every swarm announced in the DHT, most peers first
            {"swarm_id": "<64 hex>", "name": str, "model": str, "task": str,
             "peers": int,               # live peers, as its peers last announced
             "step": int,                # the furthest step announced
             "join_command": str}
          ],
          "swarm": null | {              # null unless swarm_id was given
            "swarm_id": "<64 hex>",
            "name": str | null, "model": str | null, "task": str | null,  # null: not announced
            "step": int,                 # the furthest step of its live peers
            "peers": [                   # live peers (heartbeat not expired), by peer id
              {"peer_id": str,           # libp2p peer id (base58)
               "name": str,              # --name, may be ""
               "status": "starting" | "waiting" | "syncing" | "training" | "finishing" | "done" | ...,
               "step": int,              # steps it has sealed
               "loss": float | null,     # mean training loss of its latest local step (its own batch)
               "step_time": float,       # seconds of local compute per step (moving average)
               "sent": int, "received": int,  # wire bytes so far (TCP payload of its p2pd)
               "heals": int,             # times it healed to the majority's weights
               "late": int,              # late records it applied
               "rejected": int,          # inputs it refused (from any peer)
               "refused_by_others": int, # its records that other peers refused
               "reachable": bool | null, # dialable (directly or through a relay); null: not known yet
               "reach": "public" | "relayed" | "private" | "unknown",  # private: behind NAT, no relay
               "relay": str,             # peer id of the relay it holds a reservation on ("" if none)
               "links": int,             # its overlay neighbours
               "checkpoint_step": int,   # latest checkpoint it serves (0: the base weights only)
               "digest": str, "digest_step": int}   # latest weight digest ("" / 0: none yet)
            ],
            "loss_history": [            # with a LossHistory: mean reported loss per step, oldest first
              {"step": int, "loss": float, "peers": int}
            ],
            "join_command": str
          }
        }

    Each peer publishes its own member entry (protocol/directory.py); ``refused_by_others``
    sums what the other peers report having refused of that peer's records (signed records
    that were untimely, equivocating or over their limits): hostile peers show up there.
    ``reachable`` is true for peers reachable directly or through a relay, false for peers
    that cannot be dialed, null while a peer does not know yet.
    """
    swarms = sorted(_swarm_rows(dht).values(), key=lambda r: (-r["peers"], r["name"], r["swarm_id"]))
    for row in swarms:
        row["join_command"] = join_command(row["swarm_id"], initial_peers)
    snapshot = {"version": SNAPSHOT_VERSION, "time": round(time.time(), 3), "swarms": swarms, "swarm": None}
    if swarm_id is None:
        return snapshot
    swarm = bytes.fromhex(swarm_id) if isinstance(swarm_id, str) else bytes(swarm_id)
    sid = swarm.hex()
    peers = _peer_rows(dht, swarm)
    if history is not None:
        history.update(sid, peers)
    announced = next((r for r in swarms if r["swarm_id"] == sid), {})
    snapshot["swarm"] = {
        "swarm_id": sid,
        "name": announced.get("name"), "model": announced.get("model"), "task": announced.get("task"),
        "step": max((p["step"] for p in peers), default=announced.get("step", 0)),
        "peers": peers,
        "loss_history": history.series(sid) if history is not None else [],
        "join_command": join_command(sid, initial_peers),
    }
    return snapshot


# --- the DHT schema (protocol/directory.py, through peer/dht.py's SwarmDHT) --------------------------
def _run(coro):
    import asyncio

    return asyncio.run(coro)


def _swarm_rows(dht) -> dict[str, dict]:
    return {swarm.hex(): {"swarm_id": swarm.hex(), "name": ann.name, "model": ann.model, "task": ann.task,
                          "peers": ann.peers, "step": ann.step}
            for swarm, ann in _run(dht.directory()).items()}


def _peer_rows(dht, swarm: bytes) -> list[dict]:
    from hivemind.p2p import PeerID

    members = _run(dht.members(swarm))
    refused: dict[str, int] = {}
    for info in members.values():
        for suspect, count in info.suspects.items():
            refused[suspect] = refused.get(suspect, 0) + count
    rows = []
    for owner, info in members.items():
        rows.append({"peer_id": str(PeerID(owner)), "name": info.name, "status": info.status, "step": info.step,
                     "loss": info.loss, "step_time": info.step_time_ms / 1000, "sent": info.sent,
                     "received": info.received, "heals": info.heals, "late": info.late, "rejected": info.rejected,
                     "refused_by_others": refused.get(owner.hex(), 0),
                     "reachable": {"public": True, "relayed": True, "private": False}.get(info.reach),
                     "reach": info.reach, "relay": info.relay,
                     "links": info.peers, "checkpoint_step": info.checkpoint, "digest": info.digest,
                     "digest_step": info.digest_step})
    return sorted(rows, key=lambda r: r["peer_id"])
