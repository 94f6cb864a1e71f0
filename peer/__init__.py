"""The node: a seedswarm peer over hivemind's DHT, its persistence, and the CLI.

    from seedswarm.peer import Peer, PeerConfig
    with Peer(PeerConfig(spec=spec, steps=100), model=model, loss_fn=loss, batches=batches) as peer:
        summary = peer.train()
"""

__all__ = ["AsyncPeer", "Peer", "PeerConfig", "PeerError"]


def __getattr__(name: str):
    # imported on first use, so `seedswarm eval --help` does not pay for hivemind's import
    if name == "PeerConfig":
        from .config import PeerConfig

        return PeerConfig
    if name in ("AsyncPeer", "Peer", "PeerError"):
        from . import node

        return getattr(node, name)
    raise AttributeError(name)
