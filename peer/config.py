"""Settings of a peer, as a plain dataclass (the CLI flags map onto it one to one)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..protocol.spec import SwarmSpec
from .reach import REACHABILITY

JOIN_MODES = ("checkpoint", "replay")


@dataclass
class PeerConfig:
    # which swarm: a spec starts it (or joins it, if running); an id joins it, spec from the DHT
    spec: SwarmSpec | None = None
    swarm_id: bytes | None = None
    # network (hivemind's names)
    initial_peers: Sequence[str] = ()
    host_maddrs: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",)
    announce_maddrs: Sequence[str] = ()
    relays: Sequence[str] = ()         # circuit relays to reserve on when behind NAT; default: initial_peers
    reachability: str = "auto"         # auto | public | private (peer/reach.py)
    identity_path: str | None = None   # Ed25519 libp2p key (created if missing); default: in checkpoint_dir
    ticket: str | None = None          # members-only swarms: the hex ticket the swarm's authority issued
    # training
    steps: int = 100                   # train until the swarm has sealed this many steps
    min_peers: int = 1                 # a fresh swarm starts when this many peers (us included) are linked
    min_peers_timeout: float = 300.0
    model: str | None = None           # load the base weights from here instead of spec.model.id
    device: str = "auto"               # "cpu", "cuda", "cuda:1", ...; auto: CUDA when available
    data: str | None = None            # this peer's private JSONL data
    data_seed: int = 0                 # order in which this peer walks its own data
    # persistence
    checkpoint_dir: str | None = None  # ledger, checkpoints, identity; a temporary folder if unset
    checkpoint_every: int = 0          # steps between checkpoints; 0: 2 x spec.digest_every
    resume: bool = False
    join_by: str = "checkpoint"
    json_log: str | None = None
    name: str = ""
    # overlay and liveness
    max_links: int = 6                 # neighbours to keep links with
    finish_timeout: float = 60.0       # how long a finished peer waits for its neighbours' final votes
    linger: float = 30.0               # how long a finished peer keeps serving neighbours still catching up
    dht_refresh: float = 60.0          # seconds between refreshes of our member entry in the DHT (it lives 3x)
    announce: bool = True              # advertise the swarm in the DHT's public directory
    fault_corrupt_at: int | None = None  # chaos testing: this replica computes that step wrong until it heals

    def resolved_device(self) -> str:
        """Replicas on CPU and GPU stay bit-identical (the update arithmetic is exact on both),
        so a peer may use whatever it has."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def validate(self) -> None:
        """Raise ValueError naming the setting (as its CLI flag) that cannot work."""
        if (self.spec is None) == (self.swarm_id is None) and not self.resume:
            raise ValueError("give exactly one of --swarm-spec (start a swarm) or --swarm (join one)")
        if type(self.steps) is not int or self.steps < 1:
            raise ValueError("--steps must be at least 1")
        if type(self.min_peers) is not int or self.min_peers < 1:
            raise ValueError("--min-peers must be at least 1")
        if self.reachability not in REACHABILITY:
            raise ValueError(f"--reachability must be one of {', '.join(REACHABILITY)}")
        for flag, addrs in (("--initial-peers", self.initial_peers), ("--relays", self.relays)):
            bad = [a for a in addrs if not isinstance(a, str) or not a.startswith("/")]
            if bad:
                raise ValueError(f"{flag}: {bad[0]!r} is not a multiaddr (like /ip4/1.2.3.4/tcp/31337/p2p/12D3KooW...)")
        if self.join_by not in JOIN_MODES:
            raise ValueError(f"--join-by must be one of {JOIN_MODES}")
        if type(self.checkpoint_every) is not int or self.checkpoint_every < 0:
            raise ValueError("--checkpoint-every must be >= 0")
        if self.resume and not self.checkpoint_dir:
            raise ValueError("--resume needs the --checkpoint-dir of the peer to restart")
        if type(self.max_links) is not int or not 1 <= self.max_links <= 64:
            raise ValueError("--max-links must be in 1..64")
        if self.ticket is not None:
            try:
                raw = bytes.fromhex(self.ticket)
            except ValueError:
                raw = b""
            if len(raw) != 64:
                raise ValueError("--ticket must be the 128 hex characters the swarm's authority issued")
        if self.device != "auto":
            import torch

            try:
                device = torch.device(self.device)
            except RuntimeError:
                raise ValueError(f"--device {self.device!r} is not a torch device (cpu, cuda, cuda:N)") from None
            if device.type == "cuda" and not torch.cuda.is_available():
                raise ValueError(f"--device {self.device}: this machine has no CUDA device; use --device cpu")
