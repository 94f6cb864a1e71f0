"""`seedswarm --help` is instant: building the parser and printing any command's help imports
none of the heavy libraries (torch, transformers, hivemind, numba). No timing here: the
measured times come from scripts/bench_cli.py."""

import json
import subprocess
import sys

HEAVY = ("torch", "transformers", "hivemind", "numba", "matplotlib", "starlette", "uvicorn")

PROBE = """
import contextlib, io, json, sys
from seedswarm.peer.cli import build_parser, main

sub = next(a for a in build_parser()._actions if a.dest == "command")
commands = sorted(sub.choices)
for argv in [["--help"]] + [[name, "--help"] for name in commands]:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            main(argv)
        except SystemExit as exc:
            assert exc.code == 0, (argv, exc.code)
    assert "usage: seedswarm" in out.getvalue(), argv
print(json.dumps({"commands": commands, "loaded": sorted(m for m in HEAVY if m in sys.modules)}))
"""


def test_help_of_every_command_imports_no_heavy_library():
    proc = subprocess.run([sys.executable, "-c", f"HEAVY = {HEAVY!r}\n" + PROBE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert {"peer", "bootstrap", "demo", "monitor", "status", "swarms", "eval"} <= set(result["commands"])
    assert result["loaded"] == [], f"imported for --help: {result['loaded']}"
