"""Start-up time of the command line: wall time of `seedswarm --help` and of every command's
`--help`, each run as a fresh process (median of --runs).

    python scripts/bench_cli.py [--runs 5] [--json]

The goal is under 1 s for each; tests/test_startup.py checks the cause (no torch, transformers
or hivemind import for --help) without timing anything.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

EXE = Path(sys.executable).with_name("seedswarm")


def commands() -> list[str]:
    from seedswarm.peer.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sorted(sub.choices)


def wall(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([str(EXE), *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    wall(["--help"], 1)  # warm the file cache
    results = {"--help": wall(["--help"], args.runs)}
    for name in commands():
        results[f"{name} --help"] = wall([name, "--help"], args.runs)
    if args.json:
        print(json.dumps({"seconds_median": {k: round(v, 3) for k, v in results.items()}, "runs": args.runs,
                          "max_s": round(max(results.values()), 3)}))
        return
    for argv, seconds in results.items():
        print(f"seedswarm {argv:20s} {seconds:6.3f} s")
    print(f"slowest: {max(results.values()):.3f} s (median of {args.runs} runs each)")


if __name__ == "__main__":
    main()
