"""The README's commands are real: every `seedswarm ...` line in its shell blocks parses with
the CLI (each flag exists), every `make` target and script it names exists. (The flows
themselves run in test_demo.py, test_cli.py, test_swarm.py, test_monitor.py.)"""

import re
import shlex
from pathlib import Path

import pytest

from seedswarm.peer.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def shell_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                lines.append(line)
    return lines


def test_the_readme_has_the_commands_this_test_checks():
    lines = shell_lines()
    assert any(line.startswith("seedswarm monitor") for line in lines)
    assert {"make demo", "make test"} <= set(lines)


@pytest.mark.parametrize("line", [line for line in shell_lines() if line.startswith("seedswarm ")])
def test_every_seedswarm_command_in_the_readme_parses(line):
    argv = shlex.split(re.sub(r"\[[^\]]*\]", "", line))[1:]  # [--json]: optional parts
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"README command does not parse ({exc.code}): {line}")


def test_make_targets_scripts_and_venv_paths_in_the_readme_exist():
    text = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in set(re.findall(r"`make (\w+)", text) + re.findall(r"^make (\w+)", text, re.M)):
        assert re.search(rf"^{target}:", makefile, re.M), f"make {target}"
    for path in set(re.findall(r"(?:python|\.venv/bin/python) ((?:examples|scripts)/[\w/]+\.py)", text)):
        assert (ROOT / path).is_file(), path
    # the venv the Makefile creates is where the README says the commands are
    assert "VENV ?= .venv" in makefile and ". .venv/bin/activate" in text
