"""Settings of a peer, as a plain dataclass (the CLI flags map onto it one to one)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..protocol.spec import SwarmSpec

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
    identity_path: str | None = None
    # training
    steps: int = 100                 # train until the swarm has sealed this many steps
    min_peers: int = 1               # wait for this many live peers (this one included) before step 0
    min_peers_timeout: float = 300.0
    model: str | None = None         # load the base weights from here instead of spec.model.id
    device: str = "auto"             # "cpu", "cuda", "cuda:1", ...; auto: CUDA when available
    data: str | None = None          # this peer's private JSONL data
    data_seed: int = 0               # order in which this peer walks its own data
    # persistence
    checkpoint_dir: str | None = None  # ledger, checkpoints, identity; a temporary folder if unset
    checkpoint_every: int = 0          # steps between checkpoints; 0: 4 x spec.digest_every
    resume: bool = False
    join_by: str = "checkpoint"
    json_log: str | None = None
    name: str = ""
    # rounds and liveness
    min_round_wait: float = 0.3      # seconds a round waits for other peers at least ...
    max_round_wait: float = 30.0     # ... and at most; in between, 2 x the median step time
    dht_poll_interval: float = 1.0   # records are pushed; the DHT is read this often as a fallback
    heartbeat_interval: float = 2.0
    heartbeat_ttl: float = 6.0       # a peer silent this long is considered gone
    record_ttl: float = 3600.0       # how long records stay in the DHT
    rescan_window: int = 8           # late records older than this many steps are refused
    rescan_interval: float = 10.0    # re-read the whole window this often when the swarm stalls
    finish_timeout: float = 60.0     # how long a finished peer waits for the others to finish
    announce: bool = True
    fault_corrupt_at: int | None = None  # chaos testing: flip this replica's weights after this step

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
        if self.steps < 1:
            raise ValueError("--steps must be at least 1")
        if self.min_peers < 1:
            raise ValueError("--min-peers must be at least 1")
        if self.join_by not in JOIN_MODES:
            raise ValueError(f"--join-by must be one of {JOIN_MODES}")
        if self.checkpoint_every < 0:
            raise ValueError("--checkpoint-every must be >= 0")
        if self.resume and not self.checkpoint_dir:
            raise ValueError("--resume needs the --checkpoint-dir of the peer to restart")
        if self.device != "auto":
            import torch

            try:
                device = torch.device(self.device)
            except RuntimeError:
                raise ValueError(f"--device {self.device!r} is not a torch device (cpu, cuda, cuda:N)") from None
            if device.type == "cuda" and not torch.cuda.is_available():
                raise ValueError(f"--device {self.device}: this machine has no CUDA device; use --device cpu")
        if not 0 < self.heartbeat_interval < self.heartbeat_ttl:
            raise ValueError("heartbeat_interval must be positive and below heartbeat_ttl")
