"""What one demo peer computes per step under each training recipe, measured interleaved.

    python scripts/bench_recipes.py [--json] [--steps 12] [--threads 1]

A demo peer's step is one local SPSA estimate on its batch (MiniLM, batch 32, the sentiment
task) plus applying the sealed step's 4 records (4 peers). The recipes of
scripts/experiments/runs.RULES (all parameters vanilla; low-rank z; BitFit: LayerNorms and
biases only, the demo's default) run one step each in turn, step after step, so background
load hits all alike; each ratio is the median of per-step ratios to the all-parameter recipe
(the demo's recipe before BitFit). Ratios are what to compare across machines; the demo's wall
time also holds start-up, evaluation and the network rounds, which do not depend on the recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent / "experiments"))

import torch

from runs import RULES, RunConfig, Setting  # noqa: E402
from seedswarm.model import Replica  # noqa: E402
from seedswarm.protocol import Record, Signer  # noqa: E402

PEERS = 4
RECIPES = ("vanilla", "lowrank", "bitfit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a demo peer on 2 cores gets 1)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    setting = Setting(16)
    torch.set_num_threads(args.threads)
    signers = [Signer(bytes([i + 1]) * 32) for i in range(PEERS)]
    replicas, streams = {}, {}
    for name in RECIPES:
        cfg = RunConfig(name, name, peers=PEERS, **RULES[name])
        replicas[name] = Replica.for_task(setting.fresh_model(), setting.spec(cfg), setting.task)
        streams[name] = setting.stream(0, 1)
    times: dict[str, list[float]] = {name: [] for name in RECIPES}
    for t in range(args.steps + 1):  # step 0 warms up (numba compile, first-forward checks)
        for name in RECIPES:
            replica, stream = replicas[name], streams[name]
            # the other peers' records of this step: their bytes only matter as numbers here
            others = [Record.create(s, replica.swarm_id, t, 4, bytes([(17 * t + 5 * i) % 200])) for i, s in enumerate(signers[1:])]
            started = time.perf_counter()
            own = replica.local_step(t, signers[0], [setting.task.collate(next(stream))]).record
            replica.apply_step([own, *others])  # queued; applied fused into the next step's perturbation pass
            if t:
                times[name].append(time.perf_counter() - started)
    result = {"steps": args.steps, "threads": args.threads, "peers": PEERS,
              "step_seconds_median": {n: statistics.median(v) for n, v in times.items()},
              "step_over_vanilla": {n: statistics.median(a / b for a, b in zip(times[n], times["vanilla"])) for n in RECIPES}}
    if args.json:
        print(json.dumps(result))
    else:
        for n in RECIPES:
            print(f"{n:>8}: {result['step_seconds_median'][n]:.3f} s per peer step, "
                  f"{result['step_over_vanilla'][n]:.2f} x the all-parameter recipe")


if __name__ == "__main__":
    main()
