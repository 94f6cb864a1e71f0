"""Swarm benchmark: the real swarm core at N = 10, 100 and 1,000 peers, simulated.

    python scripts/bench_swarm.py [--json] [--peers 10 100 1000] [--steps 30] [--seed 0]

Every peer runs ``SwarmCore`` (peer/core), the same code a real peer runs; the simulator
(peer/sim.py) plays the network and a stand-in replica whose weights are a hash chain over
the applied record ids, so "replicas identical" means identical applied history. The world:

- one-way latency per pair from 20 ms to 300 ms (log-normal around 80 ms), 1% of messages lost;
- churn: every 10 simulated seconds 1/6 of 10% of the live peers leave (half announced, half
  crashed) and as many join, alternately by checkpoint and by replay from step 0;
- 5% hostile peers, cycling through wrong-sign maximum bytes, equivocation, far-future records
  and statuses, late-record spam, malformed frames, fake votes with a fake checkpoint;
- each peer takes 2-4 s per local step (drawn per peer).

Per N it prints (one JSON object with --json, keyed by N):

- peers, joins, leaves
- replicas_identical   every honest replica that finished has the same final digest
- records_lost         records applied by some honest replica but missing from a finished one
- msgs_per_peer_step, bytes_per_peer_step  everything a peer sends, frame headers included,
                       over all peers that ever ran, per target step
- record_bytes_per_step  the bytes of the records each replica must receive per step
- bytes_over_records   bytes_per_peer_step / record_bytes_per_step (goal: <= 4)
- seal_p50_s, seal_p99_s  from a peer's own record to the seal of its step, steady state
- slowest_step_s, seal_p99_over_slowest_step (goal: < 3)
- wall_s               this machine's seconds for the simulation
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from seedswarm.peer.sim import HOSTILE_MIX, Scenario, run_scenario


def scenario(peers: int, steps: int, seed: int) -> Scenario:
    hostile = max(1, round(0.05 * peers))
    return Scenario(peers=peers, steps=steps, seed=seed, loss=0.01, compute=(2.0, 4.0),
                    hostile=[HOSTILE_MIX[i % len(HOSTILE_MIX)] for i in range(hostile)],
                    churn_per_minute=0.10, timeout=3600.0)


def run(peers: int, steps: int, seed: int) -> dict:
    start = time.perf_counter()
    _, result = run_scenario(scenario(peers, steps, seed))
    result["bytes_over_records"] = round(result["bytes_per_peer_step"] / max(result["record_bytes_per_step"], 1), 2)
    result["seal_p99_over_slowest_step"] = round(result["seal_p99_s"] / result["slowest_step_s"], 2)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object, keyed by N")
    parser.add_argument("--peers", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    results = {}
    for n in args.peers:
        results[str(n)] = run(n, args.steps, args.seed)
        if not args.json:
            print(f"N={n}: " + ", ".join(f"{k} {v}" for k, v in results[str(n)].items()), flush=True)
        else:
            print(f"N={n} done in {results[str(n)]['wall_s']} s", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
