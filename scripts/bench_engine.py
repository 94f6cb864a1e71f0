"""Engine benchmark: perturbation throughput and the cost of a local SPSA step, in one run.

    python scripts/bench_engine.py [--json] [--rounds 4] [--steps 10]

All figures come from this run on this machine. The things compared are measured
interleaved, step by step, and each ratio is the median of per-step ratios, so background
load hits both sides alike. Ratios are what to compare across machines.

- perturb_melem_s       our fused generate-and-apply (one update term, in place) over every
                        MiniLM parameter tensor, in million elements per second
- torch_normal_melem_s  the same tensors with torch: z = normal_(), p.add_(z, alpha=c)
- step_over_2fwd        one local SPSA step (two perturbed forwards, record, update) over two
                        plain forwards of the same batch (MiniLM, batch 32, sentiment task)
- mezo_step_over_2fwd   the same for MeZO's step (torch.normal, four regenerations)
- seal_N_over_2fwd      applying one sealed step of N records (N = 1, 10, 100, 1000; one
                        gradient each, distinct machines) over two plain forwards: what every
                        replica pays per step in a swarm of N training peers
- seal_N_over_2fwd_poolK the same step in a swarm with a seed pool of K directions per step
                        (spec.seed_pool = K, SPEC 5.2; K = 16 and 64): at most K update terms
                        whatever N
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import replace

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

from seedswarm.model import BatchStream, Replica, build_task, load_model, sentiment_examples, split
from seedswarm.model.baselines import MezoStep
from seedswarm.model.loading import BUNDLED_ID
from seedswarm.model.perturb import Term, apply
from seedswarm.model.tasks import PRESETS
from seedswarm.protocol import Signer, CodecParams, LRSchedule, ModelRef, SwarmSpec
from seedswarm.protocol.records import Record

SIGNER = Signer(bytes(32))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="steps (and forward pairs) per round")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seal-sizes", type=int, nargs="*", default=[1, 10, 100, 1000],
                        help="records per sealed step for the seal_N_over_2fwd curve")
    parser.add_argument("--pools", type=int, nargs="*", default=[16, 64],
                        help="seed pool sizes for the seal_N_over_2fwd_poolK curves")
    args = parser.parse_args()

    model, tokenizer = load_model(None)
    task = build_task(PRESETS["sentiment"], tokenizer)
    train, _ = split(sentiment_examples())
    stream = BatchStream(train, args.batch_size, seed=0)
    batches = [task.collate(next(stream)) for _ in range(args.steps)]
    spec = SwarmSpec(name="bench", model=ModelRef(BUNDLED_ID), task=PRESETS["sentiment"],
                     lr=LRSchedule(base=1e-4), codec=CodecParams(clip=64.0))
    replica = Replica.for_task(model, spec, task)
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

    steps = iter(range(10**9))

    def plain_pair(batch):
        with torch.no_grad():
            task.loss(model, batch)
            task.loss(model, batch)

    def ours_step(batch):
        s = next(steps)
        replica.apply_step([replica.local_step(s, SIGNER, [batch]).record])

    def mezo_step(batch):
        mezo.step(lambda: task.loss(model, batch), seed=next(steps))

    # Warm-up (JIT, caches), then interleave the things compared step by step, so that load
    # from other tenants of the machine falls on both sides of every ratio alike.
    for batch in batches[:2]:
        ours_apply(), torch_apply(), plain_pair(batch), ours_step(batch), mezo_step(batch)
    apply_ratio, ours_t, torch_t, step_ratio, mezo_ratio, fwd, step, mezo_s = [], [], [], [], [], [], [], []
    for r in range(args.rounds):
        a, b = timed(ours_apply), timed(torch_apply)
        ours_t.append(a), torch_t.append(b), apply_ratio.append(b / a)
        for batch in batches:
            f = timed(lambda: plain_pair(batch))
            o = timed(lambda: ours_step(batch))
            m = timed(lambda: mezo_step(batch))
            fwd.append(f), step.append(o), mezo_s.append(m)
            step_ratio.append(o / f), mezo_ratio.append(m / f)
    med = statistics.median
    seal_ratios = {}
    pooled = {k: Replica.for_task(model, replace(spec, seed_pool=k), task) for k in args.pools}
    for n in args.seal_sizes:
        # n records of one step by n machines; fixed bytes, so only the count varies
        records = [Record(step=0, machine=Signer(i.to_bytes(32, "big")).machine, scale_exp=4,
                          grads=bytes([(37 * i) % 127 + 1])) for i in range(n)]
        sealers = {"": replica, **{f"_pool{k}": r for k, r in pooled.items()}}
        for sealer in sealers.values():
            sealer.apply_step(records), sealer.flush()  # warm-up: kernels specialise on the term count
        ratios = {suffix: [] for suffix in sealers}
        for batch in batches[: max(3, args.rounds)]:
            for suffix, sealer in sealers.items():  # interleaved: every curve sees the same load
                f = timed(lambda: plain_pair(batch))
                a = timed(lambda: (sealer.apply_step(records), sealer.flush()))
                ratios[suffix].append(a / f)
        for suffix, values in ratios.items():
            seal_ratios[f"seal_{n}_over_2fwd{suffix}"] = round(med(values), 3)
    result = {
        "params": numel,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "perturb_melem_s": round(numel / med(ours_t) / 1e6, 1),
        "torch_normal_melem_s": round(numel / med(torch_t) / 1e6, 1),
        "perturb_speedup": round(med(apply_ratio), 2),
        "two_forwards_s": round(med(fwd), 4),
        "step_s": round(med(step), 4),
        "mezo_step_s": round(med(mezo_s), 4),
        "step_over_2fwd": round(med(step_ratio), 3),
        "mezo_step_over_2fwd": round(med(mezo_ratio), 3),
        "samples": len(step_ratio),
        **seal_ratios,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:24s} {value}")


if __name__ == "__main__":
    main()
