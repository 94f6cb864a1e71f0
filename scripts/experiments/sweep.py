"""A small sweep over run settings: how runs.RULES' learning rates and the demo's recipe were picked.

    python scripts/experiments/sweep.py [--peers 4] [--steps 30] [--eval-every 10] [--threads 1] RUN [RUN ...]

Each RUN is ``key=value`` pairs joined by commas, keys of ``runs.RunConfig``: ``lr``, ``eps``,
``normalize``, ``rank``, ``pool``, ``samples``, ``batch``, ``schedule`` (an lr decaying to
``min_ratio`` x lr at the last step: ``cosine`` or ``linear``) and ``trainable`` / ``frozen``
(name patterns joined by ``|``), e.g. ``normalize=rms,lr=1e-3``, ``pool=4``,
``lr=1e-2,schedule=cosine`` or ``lr=2e-4,frozen=*embeddings*``. Every run goes through ``runs.train_run`` on the same data,
seeds and batches as run_all.py (a 256-example held-out subset every ``--eval-every`` steps).
Prints one line per run: subset accuracy per evaluation, full in-distribution and
out-of-template accuracy, and the steps it took to reach the first run's final subset accuracy
(the mean of its last 3 evaluations, as run_all.py's rule comparison).
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from runs import RunConfig, Setting, steps_to_target, train_run

_TYPES = {f.name: f.type for f in dataclasses.fields(RunConfig)}


def parse_run(text: str, **base) -> RunConfig:
    """``key=value,...`` -> a RunConfig (named by the text itself)."""
    kwargs = dict(base)
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key not in _TYPES or key in ("name", "label"):
            raise SystemExit(f"unknown run setting {key!r} in {text!r}")
        kind = _TYPES[key]
        kwargs[key] = (tuple(value.split("|")) if "tuple" in str(kind) else int(value) if kind in (int, "int")
                       else float(value) if kind in (float, "float") else value)
    return RunConfig(text, text, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="key=value,... e.g. normalize=rms,lr=1e-3")
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 when sharing the machine)")
    args = parser.parse_args()
    setting = Setting(256)
    torch.set_num_threads(args.threads)
    zero_shot = setting.accuracy(setting.fresh_model())
    print(f"zero-shot subset {zero_shot:.2f}%", flush=True)
    target = None
    for text in args.runs:
        cfg = parse_run(text, peers=args.peers, steps=args.steps, eval_every=args.eval_every)
        r = train_run(cfg, setting, zero_shot, log=lambda _: None)
        if target is None:
            target = sum(e.accuracy for e in r.evals[-3:]) / len(r.evals[-3:])
        curve = " ".join(f"{e.step}:{e.accuracy:.1f}" for e in r.evals)
        print(f"{text}  {args.peers} peers  subset {curve}  full {r.final_full:.2f}  out-of-template "
              f"{r.final_unseen:.2f}  steps to {target:.2f}: {steps_to_target(r, target)}  {r.seconds:.0f}s"
              f"{'  DIVERGED' if r.diverged else ''}", flush=True)


if __name__ == "__main__":
    main()
