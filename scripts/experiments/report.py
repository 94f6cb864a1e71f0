"""Plots (matplotlib, Agg, PNG) and RESULTS.md from the results of one run_all invocation."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

from runs import CODECS, RunResult, steps_to_target  # noqa: E402


def _curve(ax, result: RunResult, x: str, **style) -> None:
    evals = result.evals if x == "step" else [e for e in result.evals if e.sent_bytes > 0]
    xs = [e.step if x == "step" else e.sent_bytes for e in evals]
    ax.plot(xs, [e.accuracy for e in evals], marker=".", label=result.config.label, **style)


def plot_curves(results: Sequence[RunResult], zero_shot: float, path: Path, x: str, title: str) -> None:
    """Held-out subset accuracy against steps (x="step") or cumulative bytes sent (x="bytes")."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ax.axhline(zero_shot, color="grey", linestyle="--", label=f"zero-shot ({zero_shot:.1f}%)")
    for r in results:
        _curve(ax, r, x)
    if x == "bytes":
        ax.set_xscale("log")
        ax.set_xlabel("bytes sent by all peers, cumulative (log scale)")
    else:
        ax.set_xlabel("training step")
    ax.set_ylabel("held-out accuracy (%, fixed subset)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_scaling(rows: Sequence[dict], path: Path, target: float) -> None:
    """Steps to reach the target accuracy against peers, with the ideal linear speedup."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    reached = [r for r in rows if r["steps"] is not None]
    if reached:
        ax.plot([r["peers"] for r in reached], [r["steps"] for r in reached], "o-", label="measured (one-byte swarm)")
    base = rows[0]["steps"]
    if base is not None:
        peers = [r["peers"] for r in rows]
        ax.plot(peers, [base / p for p in peers], "k--", alpha=0.6, label="linear speedup (steps(1) / peers)")
    ax.set_xscale("log", base=2)
    if reached:
        ax.set_yscale("log", base=2)
    ax.set_xticks([r["peers"] for r in rows], [str(r["peers"]) for r in rows])
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("peers")
    ax.set_ylabel("steps to reach target")
    ax.set_title(f"Steps to {target:.1f}% held-out (subset) accuracy")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_rules(runs: dict[str, RunResult], rows: Sequence[dict], zero_shot: float, out: Path) -> None:
    """rules_vs_step.png and rules_vs_bytes.png: every rule, 1 and 4 peers, with vanilla's target."""
    for x, name in (("step", "rules_vs_step.png"), ("bytes", "rules_vs_bytes.png")):
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
        for ax, p in zip(axes, sorted({r["peers"] for r in rows})):
            ax.axhline(zero_shot, color="grey", linestyle="--", label=f"zero-shot ({zero_shot:.1f}%)")
            target = next(r["target"] for r in rows if r["peers"] == p)
            ax.axhline(target, color="black", linestyle=":", alpha=0.6, label=f"vanilla's final ({target:.1f}%)")
            for r in rows:
                if r["peers"] == p:
                    _curve(ax, runs[f"rule-{r['rule']}-p{p}"], x)
            if x == "bytes":
                ax.set_xscale("log")
            ax.set_xlabel("training step" if x == "step" else "bytes of records sent, all peers (log scale)")
            ax.set_title(f"{p} peer{'s' * (p > 1)}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        axes[0].set_ylabel("in-distribution held-out accuracy (%, subset)")
        fig.suptitle("Update rules, same data, seeds and batches", fontsize=11)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)


def rules_section(rows: Sequence[dict], zs_full: float, zs_unseen: float, heading: str = "## 6. Update rules") -> list[str]:
    """The update-rule comparison: table and plots (written by ``plot_rules``)."""
    table = _table(
        ["rule", "peers", "settings", "steps", "gradients", "subset acc at end (%)", "in-distribution held-out (%)",
         "out-of-template (%)", "steps to vanilla's final", "bytes to vanilla's final", "time (s)"],
        [["zero-shot", "-", "-", 0, 0, "-", f"{zs_full:.2f}", f"{zs_unseen:.2f}", "-", "-", "-"]]
        + [[r["rule"], r["peers"], r.get("settings", f"lr {r['lr']:g}"), r["steps"], r.get("gradients", r["steps"] * r["peers"]),
            f"{r['final_subset']:.2f}",
            f"{r['final_full']:.2f} ({r['final_full'] - zs_full:+.2f})", f"{r['final_unseen']:.2f} ({r['final_unseen'] - zs_unseen:+.2f})",
            r["steps_to_target"] if r["steps_to_target"] is not None else f"not in {r['steps']}",
            _fmt_bytes(r["bytes_to_target"]) if r["bytes_to_target"] is not None else "-", f"{r['seconds']:.0f}"]
           for r in rows])
    return [
        heading,
        "",
        "Every rule is a pure function of a sealed step's records and the spec (`protocol/aggregation.py`, SPEC.md "
        "section 10.3), so replicas and replays stay bit-identical. `vanilla`: the default step rule (redescending "
        "clip at 2x the step's median |g|, coef = -lr g). `rms` (FZOO-style, `aggregation.normalize = \"rms\"`): the "
        "same clip, then every gradient of the step divided by the root mean square of the step's gradients, so the "
        "lr is a step length (with 1 peer and 1 sample a step is +-lr along z: sign-SGD). `lowrank` "
        "(`perturbation_rank`, SPEC.md section 5.1, LOZO-style): every weight matrix is perturbed and updated along "
        "a rank-r sign matrix U V^T / sqrt(r) (exact on every device) instead of independent signs. `bitfit`: the "
        "vanilla rule with only the LayerNorm gains and biases trainable (`trainable` = `*LayerNorm*`, `*bias`: "
        "31,104 of 22.7M parameters), the demo's default recipe. `bitfit-2probes`: the same with two probes "
        "per record (`samples_per_step` 2, two bytes) on one batch of 16 instead of one probe on 32, so the same "
        "examples and forward work per step, at half the lr. Each rule at the lr its sweep picked (`runs.RULES`).",
        "",
        "Same data, seeds and batches for every rule; P peers x the steps shown (P one-byte records of 115 B per step). "
        "Target: the vanilla run's final subset accuracy with the same peers (mean of its last 3 evaluations); steps to "
        "it are the first evaluated step at or above it (rounded up to the evaluation grid). Final accuracies: all "
        "in-distribution held-out words (training templates) and all out-of-template examples (held-out words in "
        "templates never trained on), with the gain over zero-shot in brackets.",
        "",
        table,
        "",
        "![rules vs step](rules_vs_step.png)",
        "",
        "![rules vs bytes](rules_vs_bytes.png)",
        "",
    ]


def write_rules(out: Path, runs: dict[str, RunResult], rows: Sequence[dict], meta: dict) -> None:
    """``run_all.py --rules-only``: RULES.md, the two plots and rules.json in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    plot_rules(runs, rows, meta["zero_shot"], out)
    md = [f"# Update rules: one-byte ZO on the bundled sentiment task", "",
          f"Regenerated by `{meta['command']}` on {meta['date']} in {meta['wall']}. Machine: {meta['machine']}. "
          f"Code: {meta['git']}.", ""]
    md += rules_section(rows, meta["zero_shot_full"], meta["zero_shot_unseen"], heading="## Results")
    (out / "RULES.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    raw = {"meta": meta, "rules": list(rows), "runs": {k: asdict(r) for k, r in runs.items()}}
    (out / "rules.json").write_text(json.dumps(raw, indent=1, default=str), encoding="utf-8")


def _fmt_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.3g} B"


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _per_gradient(r: RunResult) -> str:
    c = r.config
    if c.method == "adamw":
        return "(full gradient)"
    if c.method == "zero-shot":
        return "0"
    return f"{CODECS[c.codec][0]:g}"


def write_results(out: Path, ctx: dict) -> None:
    """Write RESULTS.md, the PNGs and results.json into ``out``. ``ctx`` holds everything measured."""
    runs: dict[str, RunResult] = ctx["runs"]
    zs, zs_full, target = ctx["zero_shot"], ctx["zero_shot_full"], ctx["target"]
    main = [runs[k] for k in ("adamw", "zo-fp32", "onebyte-p1", "onebyte-p2", "onebyte-p4", "onebyte-p8")]
    codecs = [runs[k] for k in ("zo-fp32", "onebyte-p1", "justonebyte", "gaussian")]
    plot_curves(main, zs, out / "accuracy_vs_step.png", "step", "Held-out accuracy vs step")
    plot_curves(main, zs, out / "accuracy_vs_bytes.png", "bytes", "Held-out accuracy vs bytes communicated")
    plot_curves(codecs, zs, out / "codecs.png", "step", "Codecs and perturbations (one peer, same seeds)")
    plot_scaling(ctx["scaling"], out / "steps_to_target.png", target)
    plot_rules(runs, ctx["rules"], zs, out)

    s = ctx["setting"]
    m = ctx["meta"]
    bundled = s["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    model_name = "MiniLM" if bundled else f"`{s['model']}`"
    model_line = "the bundled `all-MiniLM-L6-v2` (sentence-transformers)" if bundled else f"`{s['model']}`"
    md = [
        f"# Results: one-byte zeroth-order fine-tuning of {model_name} on sentiment",
        "",
        f"Regenerated by `{m['command']}` on {m['date']} in {m['wall']} (wall time of all runs and measurements).",
        f"Machine: {m['machine']}. Load average at start / end: {m['load']}. Times are wall "
        "times on this shared machine: compare them within this file only (the first ZO run also pays numba's JIT compile).",
        f"Code: {m['git']}. Every number, table and plot in this file comes from that one run; the raw data is in "
        "[results.json](results.json).",
        "",
        "## Setting",
        "",
        f"- Model: {model_line}, {s['numel']:,} parameters, all trainable, float32.",
        f"- Task: bundled VADER sentiment words in sentences (label-prompts: cosine to \"This is negative.\" / "
        f"\"This is positive.\", scale 20). `sentiment_data()`: words split by hash; {s['train']} training examples (every "
        f"training word in each of 8 templates), {s.get('test_full', s['test'])} in-distribution held-out examples (each "
        f"held-out word in one training template) and {s.get('unseen', '?')} out-of-template examples (each held-out word "
        "in one of 4 templates never trained on). No held-out word is ever trained on.",
        f"- Accuracy: curves and steps-to-target use a fixed held-out subset of {s['eval_size']} evenly spaced held-out "
        "examples (the held-out set is in lexicon order, so the first N would all be early letters), "
        "evaluated every few steps (section 3 lists the grids); **final** accuracies are on the **full** "
        f"held-out set ({s['test']} examples{'' if s['test'] == s.get('test_full', s['test']) else ', --test-size'}). Zero-shot: {zs:.2f}% (subset), {zs_full:.2f}% (full).",
        f"- ZO (SPSA/MeZO): lr {s['zo_lr']:g} constant, eps {s['eps']:g}, codec clip {s['clip']:g}, batch {s['batch']}, "
        "one SPSA sample per peer per step, Rademacher perturbations unless stated; every run reloads the model and uses the "
        "same seeds (seed = H(swarm id, machine id `sim-i`, step)) and the same batches (peer i: its hash shard of the "
        "training set, `BatchStream(..., 32, seed=i)`).",
        "- Swarms of P peers are simulated exactly in one process with one replica: every peer computes its record on the "
        "same weights, then the P records of the step are applied in canonical order (what every real replica does). "
        "Each peer contributes one gradient per step, so a P-peer step uses P gradients.",
        f"- First-order baseline: AdamW (backprop, lr {s['adamw_lr']:g}, torch defaults otherwise), peer 0's batches, "
        "the same step count as the one-peer ZO runs.",
        f"- Step counts: one-peer runs {s['steps']} steps; a P-peer swarm runs min({s['steps']}, 2*{s['steps']}/P) steps "
        f"(the same budget of {2 * s['steps']} gradient evaluations for P >= 2), which is enough to reach the target below "
        "if the speedup is at least half of linear.",
        "",
        "## 1. Accuracy vs step and vs bytes communicated",
        "",
        "![accuracy vs step](accuracy_vs_step.png)",
        "",
        "![accuracy vs bytes](accuracy_vs_bytes.png)",
        "",
        _table(
            ["method", "peers", "steps", "subset acc at end (%)", "full held-out acc (%)", "Δ full vs zero-shot",
             "out-of-template acc (%)", "payload B/gradient", "bytes sent, all peers, whole run", "time (s)"],
            [["zero-shot (no training)", "-", 0, f"{zs:.2f}", f"{zs_full:.2f}", "0", f"{ctx['zero_shot_unseen']:.2f}", "0", "0", "-"]]
            + [[r.config.label, r.config.peers, r.evals[-1].step, f"{r.evals[-1].accuracy:.2f}", f"{r.final_full:.2f}",
                f"{r.final_full - zs_full:+.2f}", f"{r.final_unseen:.2f}", _per_gradient(r), _fmt_bytes(r.evals[-1].sent_bytes),
                f"{r.seconds:.0f}"]
               for r in main],
        ),
        "",
        "Bytes sent: what the peers publish (each record once; gossip fan-out and transport framing not included): "
        "measured `len(record.encode())` for the one-byte runs, 4 bytes per projected gradient for fp32 ZO, and a full fp32 "
        "gradient (4 bytes x parameters) per step for AdamW if it were shared data-parallel.",
        "",
        "## 2. Codecs and perturbations (one peer, same seeds and batches)",
        "",
        "![codecs](codecs.png)",
        "",
        _table(
            ["variant", "perturbation", "B/gradient", "subset acc at end (%)", "full held-out acc (%)", "Δ full vs zero-shot"],
            [[r.config.label, r.config.perturbation, _per_gradient(r), f"{r.evals[-1].accuracy:.2f}", f"{r.final_full:.2f}",
              f"{r.final_full - zs_full:+.2f}"] for r in codecs],
        ),
        "",
        "fp32 and Just One Byte use the exact projected gradient g of the same record (same seed, same batch): fp32 updates "
        "with g, Just One Byte with `justonebyte_quantize(g)` = sign(g) exp(round(16 ln|g|)/16) (deterministic, log-scale); "
        "ours with the decoded byte (stochastically rounded, unbiased within the clip). The Gaussian run uses the spec's "
        "gaussian perturbation (different z, hence different seeds' directions and a different trajectory).",
        "",
        f"Codec error and bias, from `python scripts/bench_codec.py --json` run by this script "
        f"(heavy-tailed synthetic projected gradients, see the script's docstring):",
        "",
        _bench_table(ctx["bench"]),
        "",
        "## 3. Steps to a target accuracy vs number of peers",
        "",
        f"Target: {ctx['target_rule']} = **{target:.2f}%** on the held-out subset. Steps-to-target is the first "
        "evaluated step at or above the target, so it is rounded up to each run's evaluation grid. One run per peer "
        "count: expect noise of a few steps.",
        "",
        "![steps to target](steps_to_target.png)",
        "",
        _table(["peers", "evaluated every (steps)", "steps to target", "gradients used (peers x steps)", "speedup vs 1 peer",
                "fraction of linear"],
               [[r["peers"], r["eval_every"], r["steps"] if r["steps"] is not None else f"not reached in {r['budget']}",
                 r["peers"] * r["steps"] if r["steps"] is not None else "-",
                 f"{r['speedup']:.2f}x" if r["speedup"] else "-",
                 f"{r['speedup'] / r['peers']:.0%}" if r["speedup"] else "-"] for r in ctx["scaling"]]),
        "",
        "## 4. Bytes per step per peer",
        "",
        _table(["what one peer sends per step", "bytes", "how it was obtained"], ctx["bytes_rows"]),
        "",
        ctx["justonebyte_note"],
        "",
        *rules_section(ctx["rules"], zs_full, ctx["zero_shot_unseen"]),
        *swarm_scale_section(out),
        "## Notes",
        "",
    ]
    md += [f"- {note}" for note in ctx["notes"]]
    (out / "RESULTS.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    raw = {k: v for k, v in ctx.items() if k != "runs"}
    raw["runs"] = {k: {**asdict(r), "grads": r.grads, "record_bytes": r.record_bytes} for k, r in runs.items()}
    (out / "results.json").write_text(json.dumps(raw, indent=1, default=str), encoding="utf-8")


SCALE_COLUMNS = [("peers", "peers"), ("steps", "steps"), ("replicas_identical", "honest replicas identical"),
                 ("records_lost", "records lost"), ("msgs_per_peer_step", "msgs / peer / step (goal <= 64)"),
                 ("bytes_over_records", "bytes sent / record bytes needed (goal <= 4)"),
                 ("seal_p50_s", "seal p50 (s)"), ("seal_p99_s", "seal p99 (s)"),
                 ("seal_p99_over_slowest_step", "seal p99 / slowest step (goal < 3)"), ("joins", "joins"),
                 ("leaves", "leaves"), ("heals", "heals"), ("wall_s", "wall (s)")]


def swarm_scale_section(out: Path) -> list[str]:
    """Section 5 from docs/swarm_scale.json (written by scripts/bench_swarm.py --save), if present."""
    path = out / "swarm_scale.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    results = data["results"]
    rows = [[results[n].get(k, "-") for k, _ in SCALE_COLUMNS] for n in sorted(results, key=int)]
    return [
        "## 5. The swarm at scale (simulated, the real swarm core)",
        "",
        f"`{data['command']}` ({data['date']}, {data['machine']}). Every peer runs `SwarmCore` (peer/core), the "
        "code real peers run, over `peer/sim.py`'s network: one-way latency 20-300 ms per pair (log-normal around "
        "80 ms), 1% of messages lost, 10% of peers leaving per simulated minute (half of them crashing) and as many "
        "joining (alternately by checkpoint and by replay), 5% hostile peers cycling through wrong-sign maximum bytes, "
        "equivocation, far-future records and statuses, late-record spam, malformed frames and fake votes with a fake "
        "checkpoint; each honest peer takes 2-4 s per local step. A stand-in replica hashes the applied record ids, so "
        "\"identical\" means the same applied history. Seal latency: from a peer's own record to the seal of its step, "
        "steps 0-1 left out.",
        "",
        _table([title for _, title in SCALE_COLUMNS], rows),
        "",
        "![swarm at scale](swarm_scale.png)",
        "",
    ]


def _bench_table(bench: dict | None) -> str:
    if not bench:
        return "(bench_codec.py failed; see Notes.)"
    rows = []
    for key, what in (("rel_rms_error", "relative RMS error, draws within the clip"), ("rel_rms_error_all", "relative RMS error, all draws"),
                      ("max_rel_bias", "max relative bias (grid of fixed g)"), ("bits_on_the_wire", "bits per gradient")):
        v = bench.get(key, {})
        rows.append([what, v.get("ours"), v.get("justonebyte"), v.get("fp32")])
    rows.append(["fraction of draws clipped by ours", bench.get("clipped_fraction"), "-", "-"])
    return _table(["metric", "ours (one byte)", "Just One Byte", "fp32"], rows) + f"\n\nRaw JSON: `{json.dumps(bench)}`"
