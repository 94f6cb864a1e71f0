"""Learning: the bundled MiniLM fine-tuned by one peer through one-byte records on the
VADER sentiment task gains held-out accuracy."""

import torch

from seedswarm.model import BatchStream, Replica, build_task, evaluate, load_model, sentiment_examples, split
from seedswarm.model.loading import BUNDLED_ID
from seedswarm.model.tasks import PRESETS
from seedswarm.protocol import Signer, CodecParams, LRSchedule, ModelRef, SwarmSpec

SIGNER = Signer(bytes(range(32)))


def test_one_byte_training_raises_held_out_accuracy_by_five_points():
    torch.manual_seed(0)
    model, tokenizer = load_model(None)
    task = build_task(PRESETS["sentiment"], tokenizer)
    train, test = split(sentiment_examples())
    spec = SwarmSpec(name="learning-test", model=ModelRef(BUNDLED_ID), task=PRESETS["sentiment"],
                     lr=LRSchedule(base=1e-4), eps=1e-3, codec=CodecParams(clip=64.0))
    replica = Replica.for_task(model, spec, task)
    before = evaluate(model, task, test)["accuracy"]
    stream = BatchStream(train, 32, seed=0)
    for step in range(60):
        result = replica.local_step(step, SIGNER, [task.collate(next(stream))])
        assert len(result.record.grads) == 1  # one byte carries this step's gradient
        replica.apply_step([result.record])
    replica.flush()
    after = evaluate(model, task, test)["accuracy"]
    assert after >= before + 5, (before, after)
