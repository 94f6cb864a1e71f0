"""The experiments pipeline end to end at toy size: every run of the plan, the codec bench,
the report (markdown, plots, raw JSON). Toy size: a tiny random BERT instead of MiniLM and a
64-example held-out set, so it takes seconds; the same code paths run as in `make
experiments`, which produces the real numbers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "experiments"))
from runs import RULES  # noqa: E402


@pytest.mark.slow
def test_run_all_writes_results_tables_and_plots(tmp_path, tiny_swarm):
    script = ROOT / "scripts" / "experiments" / "run_all.py"
    proc = subprocess.run([sys.executable, str(script), "--quick", "--steps", "2", "--eval-size", "32", "--test-size", "64",
                           "--no-demo", "--model", str(tiny_swarm / "tiny"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for png in ("accuracy_vs_step.png", "accuracy_vs_bytes.png", "codecs.png", "steps_to_target.png", "rules_vs_step.png",
                "rules_vs_bytes.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    raw = json.loads((tmp_path / "results.json").read_text())
    assert set(raw["runs"]) == {"onebyte-p1", "zo-fp32", "justonebyte", "gaussian", "adamw",
                                "onebyte-p2", "onebyte-p4", "onebyte-p8"} | {f"rule-{rule}-p{p}" for rule in RULES for p in (1, 4)}
    assert {(r["rule"], r["peers"]) for r in raw["rules"]} == {(rule, p) for rule in RULES for p in (1, 4)}
    assert raw["runs"]["rule-lowrank-p4"]["config"]["rank"] > 0
    assert all(0 <= r["final_unseen"] <= 100 for r in raw["rules"]) and raw["runs"]["rule-rms-p4"]["config"]["normalize"] == "rms"
    one_byte = raw["runs"]["onebyte-p1"]
    assert len(one_byte["grads"]) == 2 and all(b > 0 for b in one_byte["record_bytes"])
    assert raw["bench"]["bits_on_the_wire"]["ours"] == 8
    md = (tmp_path / "RESULTS.md").read_text()
    assert raw["setting"]["model"] == str(tiny_swarm / "tiny") and raw["setting"]["test"] == 64
    for section in ("## 1.", "## 2.", "## 3.", "## 4.", "## 6. Update rules", "out-of-template", "--no-demo", "--test-size"):
        assert section in md


@pytest.mark.slow
def test_rules_only_writes_the_update_rule_comparison(tmp_path, tiny_swarm):
    script = ROOT / "scripts" / "experiments" / "run_all.py"
    proc = subprocess.run([sys.executable, str(script), "--rules-only", "--steps", "2", "--eval-size", "16", "--test-size",
                           "32", "--model", str(tiny_swarm / "tiny"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    raw = json.loads((tmp_path / "rules.json").read_text())
    assert len(raw["rules"]) == 2 * len(RULES) and all(r["steps"] == 2 for r in raw["rules"])
    assert "## Results" in (tmp_path / "RULES.md").read_text() and not (tmp_path / "RESULTS.md").exists()
    assert (tmp_path / "rules_vs_bytes.png").read_bytes()[:4] == b"\x89PNG"


def test_a_run_setting_reaches_its_swarm_spec():
    """sweep.py's key=value runs set spec fields through RunConfig (here the seed pool, SPEC 5.2)."""
    from runs import run_spec
    from sweep import parse_run

    cfg = parse_run("pool=4,lr=2e-4,rank=1", peers=4, steps=30)
    spec = run_spec("m", cfg)
    assert (cfg.peers, spec.seed_pool, spec.perturbation_rank, spec.lr.base) == (4, 4, 1, 2e-4)
    assert "seed_pool" not in run_spec("m", parse_run("lr=1e-4")).to_dict()
