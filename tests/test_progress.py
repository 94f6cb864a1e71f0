"""Progress output when stdout is not a terminal: a line per phase, progress lines, notes."""

import io

from seedswarm.peer.progress import Phases


def test_plain_lines_name_every_phase_and_show_first_and_last_progress():
    out = io.StringIO()
    with Phases(tty=False, out=out, every=3600) as show:
        show.phase("load model", "the bundled MiniLM")
        show.phase("train", "2 peers x 3 steps", total=3)
        for step in (1, 2, 3):
            show.progress(step, f"step {step}/3\nloss 0.5 (training batch)")
        show.note("peer b joined")
        show.phase("save")
    lines = [line.split("] ", 1)[1] for line in out.getvalue().splitlines()]
    assert lines == ["load model: the bundled MiniLM ...", "train: 2 peers x 3 steps ...",
                     "step 1/3  loss 0.5 (training batch)", "step 3/3  loss 0.5 (training batch)",  # 2/3: within `every`
                     "peer b joined", "save ..."]


def test_a_terminal_gets_a_live_display_that_ends_with_every_phase_ticked():
    out = io.StringIO()
    out.isatty = lambda: True
    with Phases(out=out) as show:
        assert show.tty
        show.phase("load model")
        show.phase("train", total=2)
        show.progress(2, "step 2/2")
    text = out.getvalue()
    assert "load model" in text and "train" in text and "2/2" in text and "✓" in text
