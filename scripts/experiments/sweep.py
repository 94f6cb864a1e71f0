"""A small lr sweep for the update rules: how runs.RULES' learning rates were picked.

    python scripts/experiments/sweep.py [--peers 4] [--steps 30] none:1e-4 none:2e-4 rms:1e-3 ...

Each argument is ``normalize:lr``; every run goes through ``runs.train_run`` on the same data,
seeds and batches as run_all.py (a 256-example held-out subset every 10 steps). Prints one
line per run: subset accuracy per evaluation, full in-distribution and out-of-template accuracy.
"""

from __future__ import annotations

import argparse

from runs import RunConfig, Setting, train_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="normalize:lr, e.g. rms:1e-3")
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    setting = Setting(256)
    zero_shot = setting.accuracy(setting.fresh_model())
    print(f"zero-shot subset {zero_shot:.2f}%", flush=True)
    for spec in args.runs:
        normalize, lr = spec.split(":")
        cfg = RunConfig(spec, spec, lr=float(lr), normalize=normalize, peers=args.peers, steps=args.steps, eval_every=10)
        r = train_run(cfg, setting, zero_shot, log=lambda _: None)
        curve = " ".join(f"{e.step}:{e.accuracy:.1f}" for e in r.evals)
        print(f"{spec:>12}  {args.peers} peers  subset {curve}  full {r.final_full:.2f}  out-of-template "
              f"{r.final_unseen:.2f}{'  DIVERGED' if r.diverged else ''}", flush=True)


if __name__ == "__main__":
    main()
