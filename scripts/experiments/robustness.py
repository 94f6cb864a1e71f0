"""Bounded influence: what hostile peers that follow the protocol can do to learning.

    python scripts/experiments/robustness.py [--steps 30] [--out docs/robustness.json]

A hostile peer here signs valid records of the right width and step, on time, but every
gradient byte is the largest one (+-127, i.e. the codec's clip) with the *wrong* sign: it
computes its true projected gradient on its own data and reports the opposite. Every run
uses the bundled MiniLM on the VADER sentiment task (the experiments' setting: batch 32,
lr 1e-4, eps 1e-3, same data and seeds), one in-process replica through the real record path
(Replica.local_step, Replica.apply_step: the spec's step rule), and ends with the accuracy
on the full held-out set. Swarms compared:

- 2 honest peers (the baseline), and 2 honest + 1 hostile with the default step rule
  (redescend, factor 2), with plain median clipping, and with no rule (before protocol v2);
- 4 peers with 0, 1 and 2 of them hostile (default step rule).

Each configuration runs with --seeds data orders (and identities); the table reports the mean
accuracy and the range. Prints one JSON object and writes it to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runs import BATCH_SIZE, Setting  # noqa: E402

from seedswarm.model import BatchStream, Replica, shard  # noqa: E402
from seedswarm.protocol import Aggregation, Record, Signer  # noqa: E402


def run(setting: Setting, peers: int, hostile: int, steps: int, clip: str, factor: float = 1.0, seed: int = 0) -> dict:
    spec = dataclasses.replace(setting.spec(), aggregation=Aggregation(clip=clip, clip_factor=factor))
    model = setting.fresh_model()
    replica = Replica.for_task(model, spec, setting.task)
    signers = [Signer(bytes([i + 1, seed]) * 16) for i in range(peers)]
    streams = [BatchStream(shard(setting.train, i, peers), BATCH_SIZE, seed=1000 * seed + i) for i in range(peers)]
    started = time.perf_counter()
    for t in range(steps):
        records = []
        for i, (signer, stream) in enumerate(zip(signers, streams)):
            local = replica.local_step(t, signer, [setting.task.collate(next(stream))])
            record = local.record
            if i >= peers - hostile:  # the true gradient's opposite, as loud as a byte can say it
                record = Record.create(signer, spec.swarm_id, t, 0, bytes([0x81 if g > 0 else 0x7F for g in local.grads]))
            records.append(record)
        replica.apply_step(records)
    replica.flush()
    accuracy = setting.accuracy(model, full=True)
    return {"peers": peers, "hostile": hostile, "clip": clip, "clip_factor": factor, "steps": steps, "seed": seed,
            "accuracy": round(accuracy, 2),
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--model", default=None, help="another model (default: the bundled MiniLM)")
    parser.add_argument("--test-size", type=int, default=None, help="held-out examples to evaluate on (default: all)")
    parser.add_argument("--out", default="docs/robustness.json")
    parser.add_argument("--rules", nargs="*", default=None, metavar="RULE:FACTOR",
                        help="compare step rules on 2 honest vs 2 honest + 1 hostile (e.g. median:1 redescend:2)")
    parser.add_argument("--seeds", type=int, default=3, help="data orders and identities per configuration (mean reported)")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    setting = Setting(eval_size=64, model=args.model, test_size=args.test_size)
    zero_shot = setting.accuracy(setting.fresh_model(), full=True)
    runs = []
    if args.rules:
        plan = [(p, h, rule.split(":")[0], float(rule.split(":")[1])) for rule in args.rules for p, h in ((2, 0), (3, 1))]
    else:
        default = Aggregation()
        plan = [(2, 0, default.clip, default.clip_factor), (3, 1, default.clip, default.clip_factor),
                (3, 1, "median", 1.0), (3, 1, "none", 1.0),
                (4, 0, default.clip, default.clip_factor), (4, 1, default.clip, default.clip_factor),
                (4, 2, default.clip, default.clip_factor)]
    table = []
    for peers, hostile, clip, factor in plan:
        seeded = []
        for seed in range(args.seeds):
            seeded.append(run(setting, peers, hostile, args.steps, clip, factor, seed))
            print(json.dumps(seeded[-1]), file=sys.stderr, flush=True)
        runs += seeded
        accs = [r["accuracy"] for r in seeded]
        table.append({"peers": peers, "hostile": hostile, "clip": clip, "clip_factor": factor,
                      "accuracy_mean": round(statistics.fmean(accs), 2), "accuracy_min": min(accs), "accuracy_max": max(accs)})
    result = {"zero_shot": round(zero_shot, 2), "held_out_examples": len(setting.test), "steps": args.steps,
              "seeds": args.seeds, "table": table, "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
