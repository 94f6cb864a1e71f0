"""The documented Python embedding example runs and does what the README says."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.slow
def test_private_swarm_example_trains_two_identical_replicas():
    proc = subprocess.run([sys.executable, str(EXAMPLES / "private_swarm.py"), "--steps", "30"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["replicas_identical"] is True
    assert result["steps"] == 30
    assert result["eval_loss_after"] < result["eval_loss_before"]
    assert result["payload_bytes_per_gradient"] == 1.0
