"""The main job: a demo swarm of real peer processes on loopback fine-tuning the bundled MiniLM."""

from __future__ import annotations

from ..model.loading import BUNDLED_ID
from ..model.tasks import PRESETS
from ..protocol.spec import CodecParams, LRSchedule, ModelRef, SwarmSpec, TaskRef


def default_spec(model: str | None = None, task: TaskRef | None = None, lr: float | None = None, name: str | None = None) -> SwarmSpec:
    """The recipe the demo uses and `seedswarm peer` starts without --swarm-spec: the bundled
    MiniLM on the VADER sentiment task (label prompts), one-byte records, Rademacher z."""
    task = task or PRESETS["sentiment"]
    return SwarmSpec(
        name=name or f"{task.kind}-{(model or BUNDLED_ID).rsplit('/', 1)[-1]}",
        model=ModelRef(model or BUNDLED_ID),
        task=task,
        lr=LRSchedule(base=lr if lr is not None else 1e-4),
        eps=1e-3,
        codec=CodecParams(clip=64.0),
        batch_size=32,
        digest_every=10,
    )
