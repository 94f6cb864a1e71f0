"""Swarm benchmark: the real swarm core at N = 10, 100 and 1,000 peers, simulated.

    python scripts/bench_swarm.py [--json] [--peers 10 100 1000] [--steps N] [--seed 0] [--plot PNG] [--save DIR]

``--save docs`` writes docs/swarm_scale.json and docs/swarm_scale.png, which
docs/RESULTS.md's section 5 shows (scripts/experiments/report.py).

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
- steady_*             the same figures while the swarm trains, as a long run sees them: from
                       the moment most replicas sealed step 3 to the moment most sealed the
                       last step (steady_steps), with steady_step_s the swarm's seconds per
                       step there. A short run's whole-run figures also carry its start and
                       its end (peers wait for their neighbours' final votes, late joiners
                       catch up): at N = 1,000 and 10 steps the end was half of the simulated time

Steps: 30 for N <= 100 and 8 above unless --steps says otherwise (one core simulates every
peer, so a run costs about N^2 x steps: N = 1,000 x 8 steps took 31 min here, on a busy
2-core machine); seal latencies leave out the first 2 steps (start-up).
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
    if "steady_steps" in result:
        result["steady_bytes_over_records"] = round(result["steady_bytes_per_peer_step"]
                                                    / max(result["record_bytes_per_step"], 1), 2)
        result["steady_seal_p99_over_slowest_step"] = round(result["steady_seal_p99_s"] / result["slowest_step_s"], 2)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object, keyed by N")
    parser.add_argument("--peers", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: 30 for N <= 100, else 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", help="also draw the per-N figures against their goals into this PNG")
    parser.add_argument("--load", help="plot/print these results (a --json output) instead of simulating")
    parser.add_argument("--save", help="write swarm_scale.json and swarm_scale.png into this folder")
    args = parser.parse_args(argv)
    results = {}
    if args.load:
        with open(args.load) as f:
            results = json.load(f)
    for n in [] if args.load else args.peers:
        steps = args.steps or (30 if n <= 100 else 8)
        results[str(n)] = {"steps": steps, **run(n, steps, args.seed)}
        if not args.json:
            print(f"N={n}: " + ", ".join(f"{k} {v}" for k, v in results[str(n)].items()), flush=True)
        else:
            print(f"N={n} done in {results[str(n)]['wall_s']} s", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(results, indent=1))
    if args.plot:
        plot(results, args.plot)
    if args.save:
        import datetime
        import os
        import platform
        import shlex

        os.makedirs(args.save, exist_ok=True)
        command = "python scripts/bench_swarm.py" + "".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:]))
        record = {"command": command, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
                  "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
                  "results": results}
        with open(os.path.join(args.save, "swarm_scale.json"), "w") as f:
            json.dump(record, f, indent=1)
        plot(results, os.path.join(args.save, "swarm_scale.png"))


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted(results, key=int)
    x = [int(n) for n in ns]
    panels = [("msgs_per_peer_step", 64, "messages sent per peer per step"),
              ("bytes_over_records", 4, "bytes sent / record bytes needed"),
              ("seal_p99_over_slowest_step", 3, "seal p99 / slowest peer's step")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, (key, goal, title) in zip(axes, panels):
        values = [results[n][key] for n in ns]
        ax.plot(x, values, "o-", label="whole run")
        steady = [results[n].get("steady_" + key) for n in ns]
        if all(v is not None for v in steady):
            ax.plot(x, steady, "s-", label="steady state")
            values += steady
        ax.set_ylim(0, 1.25 * max(goal, *values))
        ax.axhline(goal, color="tab:red", linestyle="--", label=f"goal <= {goal}")
        ax.set_xscale("log")
        ax.set_xlabel("peers")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle("simulated swarm (real core): 1% loss, 20-300 ms, 10%/min churn, 5% hostile", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
