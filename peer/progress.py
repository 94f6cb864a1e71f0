"""Progress for every long phase: a live display (rich) on a terminal, plain lines otherwise.

    with Phases() as show:
        show.phase("load model", "the bundled MiniLM")   # a spinner and its elapsed time; plain: one line
        ...
        show.phase("train", "4 peers", total=60)
        show.progress(12, "loss 0.41 (...)")       # a bar and a line; plain: a line every few seconds
        show.note("peer b joined")                 # printed above the live display

When stdout is not a terminal (``make demo | tee log``, CI), each phase prints one line when
it starts, progress prints its first and last line and at most one every ``every`` seconds
in between, and a phase that runs long without
output prints a "still ..." line, so no phase is ever silent for more than ``every`` seconds.
"""

from __future__ import annotations

import sys
import threading
import time


class Phases:
    def __init__(self, tty: bool | None = None, out=None, every: float = 10.0) -> None:
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.every = every
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._title: str | None = None
        self._total: int | None = None
        self._shown = False  # a progress line of this phase was printed (plain)
        self._line: str | None = None  # the latest progress line of this phase (plain)
        self._phase_started = self.started
        self._last_print = self.started
        self._task = None
        self._live = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if self.tty:
            from rich.console import Console, Group
            from rich.live import Live
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
            from rich.text import Text

            self.console = Console(file=self.out)
            count = TextColumn("{task.fields[count]}")  # "12/60" for phases with a count, else nothing
            self._progress = Progress(SpinnerColumn(finished_text="[green]✓"), TextColumn("{task.description}"),
                                      BarColumn(bar_width=20), count, TimeElapsedColumn(), console=self.console)
            self._info = Text("")
            self._live = Live(Group(self._progress, self._info), console=self.console, refresh_per_second=4)

    # --- the API -----------------------------------------------------------------------------------
    def __enter__(self) -> "Phases":
        if self._live is not None:
            self._live.start()
        else:
            self._ticker = threading.Thread(target=self._tick, name="seedswarm-progress", daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(interrupted=exc_type is not None)

    def phase(self, title: str, detail: str = "", total: int | None = None) -> None:
        """A new phase starts (the previous one is done): a short title, what it does, and how
        many units of work it has if known (a bar instead of a spinner)."""
        with self._lock:
            self._end_phase()
            self._title, self._phase_started = title, time.monotonic()
            self._total, self._shown, self._line = total, False, None
            if self._live is not None:
                self._info.plain = detail
                self._task = self._progress.add_task(title, total=total, count=f"0/{total}" if total else "")
            else:
                self._print(f"{title}: {detail} ..." if detail else f"{title} ...")

    def progress(self, done: int, line: str = "", total: int | None = None) -> None:
        """Where the current phase is (``done`` of its total) and a line of details."""
        with self._lock:
            if self._live is not None:
                if self._task is not None:
                    total = total or self._total
                    self._total = total
                    self._progress.update(self._task, completed=done, total=total, count=f"{done}/{total}" if total else "")
                self._info.plain = line
            elif line:
                self._line = line.replace("\n", "  ")  # the ticker prints the latest one every `every` s
                if not self._shown or (self._total is not None and done >= self._total):
                    self._shown = True
                    self._print(self._line)

    def note(self, text: str) -> None:
        """A line that stays (an event), printed above the live display."""
        with self._lock:
            if self._live is not None:
                self._live.console.print(text, markup=False, highlight=False)
            else:
                self._print(text)

    def close(self, interrupted: bool = False) -> None:
        with self._lock:
            self._end_phase(interrupted)
            self._title = None
        self._stop.set()
        if self._live is not None:
            self._live.stop()
            self._live = None

    # --- inside --------------------------------------------------------------------------------------
    def _end_phase(self, interrupted: bool = False) -> None:
        if self._live is not None and self._task is not None:
            if not interrupted:  # an interrupted phase keeps its spinner, without a tick
                task = self._progress.tasks[-1]
                self._progress.update(self._task, total=task.total or 1, completed=task.total or 1)
                self._info.plain = ""
            self._progress.stop_task(self._task)
        elif self._live is None and self._title is not None and interrupted:
            self._print(f"{self._title}: stopped after {time.monotonic() - self._phase_started:.0f} s")
        elif self._live is None and self._title is not None and time.monotonic() - self._phase_started >= self.every:
            self._print(f"{self._title}: done in {time.monotonic() - self._phase_started:.0f} s")
        self._task = None

    def _print(self, text: str) -> None:
        self._last_print = time.monotonic()
        print(f"[{self._last_print - self.started:5.0f} s] {text}", file=self.out, flush=True)

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                if self._title is not None and time.monotonic() - self._last_print >= self.every:
                    self._print(self._line or f"... still {self._title} ({time.monotonic() - self._phase_started:.0f} s so far)")
