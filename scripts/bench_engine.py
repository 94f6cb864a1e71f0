"""Engine benchmark: perturbation throughput and the cost of a local SPSA step, in one run.

    python scripts/bench_engine.py [--json] [--rounds 7] [--steps 10]

All figures come from this run on this machine; measurements of the things compared are
interleaved round by round and the median of the rounds is reported, so background load
hits both sides alike. Ratios are what to compare across machines.

- perturb_melem_s       our fused generate-and-apply (one update term, in place) over every
                        MiniLM parameter tensor, in million elements per second
- torch_normal_melem_s  the same tensors with torch: z = normal_(), p.add_(z, alpha=c)
- step_over_2fwd        one local SPSA step (two perturbed forwards, record, update) over two
                        plain forwards of the same batch (MiniLM, batch 32, sentiment task)
- mezo_step_over_2fwd   the same for MeZO's step (torch.normal, four regenerations)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

from seedswarm.model import BatchStream, Replica, build_task, load_model, sentiment_examples, split
from seedswarm.model.baselines import MezoStep
from seedswarm.model.loading import BUNDLED_ID
from seedswarm.model.perturb import Term, apply
from seedswarm.model.tasks import PRESETS
from seedswarm.protocol import CodecParams, LRSchedule, ModelRef, SwarmSpec


def timed(fn, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10, help="steps (and forward pairs) per round")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    model, tokenizer = load_model(None)
    task = build_task(PRESETS["sentiment"], tokenizer)
    train, _ = split(sentiment_examples())
    stream = BatchStream(train, args.batch_size, seed=0)
    batches = [task.collate(next(stream)) for _ in range(args.steps)]
    spec = SwarmSpec(name="bench", model=ModelRef(BUNDLED_ID), task=PRESETS["sentiment"],
                     lr=LRSchedule(base=1e-4), codec=CodecParams(clip=64.0))
    replica = Replica(model, spec, task.loss)
    mezo = MezoStep([(t.name, t.param) for t in replica.zo.tensors], eps=spec.eps, lr=1e-4)
    params = [t.param.data.view(-1) for t in replica.zo.tensors]
    numel = sum(p.numel() for p in params)
    gen = torch.Generator().manual_seed(0)

    def ours_apply():
        for i, p in enumerate(params):
            apply(p, [Term(key=0x1234 + i, coef=1e-7)], spec.perturbation)

    def torch_apply():
        for p in params:
            z = torch.empty_like(p).normal_(generator=gen)
            p.add_(z, alpha=1e-7)

    def forwards():
        with torch.no_grad():
            for b in batches:
                task.loss(model, b)
                task.loss(model, b)

    step_counter = iter(range(10**9))

    def ours_steps():
        for b in batches:
            s = next(step_counter)
            replica.apply([replica.local_step(s, b"bench", s, [b]).record])

    def mezo_steps():
        for b in batches:
            mezo.step(lambda: task.loss(model, b), seed=next(step_counter))

    for fn in (ours_apply, torch_apply, forwards, ours_steps, mezo_steps):  # warm-up: JIT, caches
        fn()
    rounds = {k: [] for k in ("ours_apply", "torch_apply", "fwd2", "step", "mezo")}
    for _ in range(args.rounds):
        rounds["ours_apply"].append(timed(ours_apply, 3))
        rounds["torch_apply"].append(timed(torch_apply, 1))
        rounds["fwd2"].append(timed(forwards, 1) / len(batches))
        rounds["step"].append(timed(ours_steps, 1) / len(batches))
        rounds["mezo"].append(timed(mezo_steps, 1) / len(batches))
    med = {k: statistics.median(v) for k, v in rounds.items()}
    result = {
        "params": numel,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "perturb_melem_s": round(numel / med["ours_apply"] / 1e6, 1),
        "torch_normal_melem_s": round(numel / med["torch_apply"] / 1e6, 1),
        "perturb_speedup": round(med["torch_apply"] / med["ours_apply"], 2),
        "two_forwards_s": round(med["fwd2"], 4),
        "step_s": round(med["step"], 4),
        "mezo_step_s": round(med["mezo"], 4),
        "step_over_2fwd": round(med["step"] / med["fwd2"], 3),
        "mezo_step_over_2fwd": round(med["mezo"] / med["fwd2"], 3),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:24s} {value}")


if __name__ == "__main__":
    main()
