"""A private swarm of two peers in one script: your own model, loss and data.

    .venv/bin/python examples/private_swarm.py [--steps 60]     # after `make demo` or `make setup`

Each peer is a full seedswarm node (its own DHT process and libp2p identity), exactly what
`seedswarm peer` runs; here they live in one Python process and train a small regression
model on their own private halves of a synthetic dataset. Only one byte per gradient and a
few bytes of record header cross the network; both replicas end bit-identical.
"""

from __future__ import annotations

import argparse
import json
import tempfile

import torch
from torch import nn

from seedswarm.model import weight_digest
from seedswarm.peer import Peer, PeerConfig
from seedswarm.protocol import CodecParams, LRSchedule, ModelRef, SwarmSpec, TaskRef


def make_model() -> nn.Module:
    torch.manual_seed(0)  # every peer must start from the same base weights
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))


def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x).squeeze(-1), y)


def private_batches(peer_index: int, batch_size: int = 64):
    """This peer's data: never leaves the peer. y = sin(w . x) with a shared hidden w."""
    w = torch.linspace(-1, 1, 8)
    gen = torch.Generator().manual_seed(1000 + peer_index)
    while True:
        x = torch.randn(batch_size, 8, generator=gen)
        yield x, torch.sin(x @ w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()

    base = make_model()
    spec = SwarmSpec(
        name="private-regression",
        model=ModelRef("example/mlp-8-32-1", digest=weight_digest(base)),  # any id; the digest pins the weights
        task=TaskRef("custom", {"loss": "mse"}),  # a label for people: the loss is the code below
        lr=LRSchedule(base=2e-3),
        eps=1e-3,
        codec=CodecParams(clip=16.0),
        samples_per_step=2,  # two perturbations per peer per step, each its own seed and byte
        digest_every=10,
    )
    x_eval, y_eval = next(private_batches(99, 512))

    first = Peer(PeerConfig(spec=spec, steps=args.steps, min_peers=2, checkpoint_dir=tempfile.mkdtemp()),
                 model=make_model(), loss_fn=loss_fn, batches=private_batches(0)).start()
    second = Peer(PeerConfig(spec=spec, steps=args.steps, min_peers=2, initial_peers=first.maddrs,
                             checkpoint_dir=tempfile.mkdtemp()),
                  model=make_model(), loss_fn=loss_fn, batches=private_batches(1)).start()
    with torch.no_grad():
        before = loss_fn(first.model, (x_eval, y_eval)).item()
    try:
        # each facade runs its peer on its own thread; train both at once
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            summaries = list(pool.map(lambda p: p.train(), (first, second)))
        with torch.no_grad():
            after = loss_fn(first.model, (x_eval, y_eval)).item()
    finally:
        first.shutdown()
        second.shutdown()
    print(json.dumps({
        "swarm_id": spec.swarm_id_hex if spec.model.digest else None,
        "steps": summaries[0]["step"],
        "eval_loss_before": round(before, 5),
        "eval_loss_after": round(after, 5),
        "replicas_identical": summaries[0]["digest"] == summaries[1]["digest"],
        "payload_bytes_per_gradient": summaries[0]["payload_bytes_per_gradient"],
        # one record carries samples_per_step one-byte gradients (2 here): a ~45-byte record is 22.5 B per gradient
        "record_bytes_per_gradient": summaries[0]["record_bytes_per_gradient"],
        "gradients_per_record": spec.samples_per_step,
    }))


if __name__ == "__main__":
    main()
