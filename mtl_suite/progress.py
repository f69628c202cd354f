"""One progress display per long command: the job's parts as nested levels (a comparison's pairs, a study's trials,
a stage chain's stages; then the folds of what is training; then the epochs of the fold), each with how far along it
is, and the time left for the whole job. On a terminal it is a live display on stderr (rich, which Typer brings);
elsewhere (CI logs, `mlflow run`, a pipe) a plain line each time a fold or a job part finishes; with --quiet nothing.

The command opens it (`display(...)`); the code that knows a level (a workflow, the tuning engine, the fold observer
in training/progress.py) opens that level on `current()`, which is a silent display when no command opened one.
The time left is the elapsed time scaled by the fraction done, where a level's fraction counts its current part
by the fraction of its own child level: it moves smoothly and needs no estimate of what each part costs. Parts found
already done (a finished run reused, folds an interrupted attempt left) took no time here, so they count for the
bars but not for the time left: a resumed job would otherwise promise to end far too soon."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, TextIO


@dataclass
class Level:
    name: str
    total: int
    done: int = 0
    reused: int = 0  # of the parts done, those found already done: no time was spent on them here
    handle: Any = None  # the rich task id on a live display
    child: "Level | None" = field(default=None, repr=False)

    def fraction(self) -> float:
        """How far along the level is (the bars)."""
        if self.total <= 0:
            return 0.0
        inner = self.child.fraction() if self.child is not None else 0.0
        return min(1.0, (self.done + inner) / self.total)

    def work_fraction(self) -> float:
        """How far along the parts this command does itself (the time left)."""
        to_do = self.total - self.reused
        if to_do <= 0:
            return 0.0
        inner = self.child.work_fraction() if self.child is not None else 0.0
        return min(1.0, (self.done - self.reused + inner) / to_do)


class Display:
    """Silent: what code sees when no command opened a display (library use, tests, --quiet)."""

    live = False

    def __init__(self) -> None:
        self.levels: list[Level] = []
        self.started = time.monotonic()

    @contextlib.contextmanager
    def level(self, name: str, total: int) -> Iterator[Level]:
        """A nested level of `total` parts (closed, and done, when the block ends)."""
        level = Level(name, max(0, int(total)))
        if self.levels:
            self.levels[-1].child = level
        self.levels.append(level)
        self._opened(level)
        try:
            yield level
        finally:
            if level in self.levels:  # with any deeper level left open by an error
                position = self.levels.index(level)
                for closing in reversed(self.levels[position:]):
                    self.levels.remove(closing)
                    self._closed(closing)
                if self.levels:
                    self.levels[-1].child = None
                self._closed_all()

    def advance(self, level: Level, note: str = "", reused: bool = False) -> None:
        """One more part of `level` done; `reused`: found done (a finished run), not done now."""
        level.done = min(level.total, level.done + 1) if level.total else level.done + 1
        if reused:
            level.reused = min(level.done, level.reused + 1)
        self._advanced(level, note)

    def find(self, name: str) -> Level | None:
        """The innermost open level of this name (e.g. the stage chain's "stages", when a command opened it)."""
        return next((level for level in reversed(self.levels) if level.name == name), None)

    def grow(self, level: Level, extra: int) -> None:
        """More parts than first known (a stage chain that must run missing stages first)."""
        level.total += extra
        self._advanced(level, "")

    def eta_text(self) -> str:
        elapsed = time.monotonic() - self.started
        fraction = self.levels[0].work_fraction() if self.levels else 0.0
        text = f"{_duration(elapsed)} elapsed"
        if 0.0 < fraction < 1.0:
            text += f", about {_duration(elapsed * (1 - fraction) / fraction)} left"
        return text

    def _opened(self, level: Level) -> None:
        pass

    def _advanced(self, level: Level, note: str) -> None:
        pass

    def _closed(self, level: Level) -> None:
        pass

    def _closed_all(self) -> None:
        pass


class PlainDisplay(Display):
    """One line per finished part of every level but the innermost (epochs: Keras prints its own lines)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream

    def _advanced(self, level: Level, note: str) -> None:
        if level.name == "epochs" or level.done == 0:
            return
        where = " · ".join(f"{lv.name} {lv.done}/{lv.total}" for lv in self.levels if lv.name != "epochs")
        self.stream.write(f"progress: {where}{f' ({note})' if note else ''}; {self.eta_text()}\n")
        self.stream.flush()


class LiveDisplay(Display):
    """rich's live display: a bar per level, the time left on the outermost one. Lines the command prints meanwhile
    (stderr and stdout) go above the bars."""

    live = True

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[eta]}"),
                                 console=Console(file=stream), transient=False, redirect_stdout=True,
                                 redirect_stderr=True, refresh_per_second=4)
        self.progress.start()

    def _opened(self, level: Level) -> None:
        indent = "  " * (len(self.levels) - 1)
        level.handle = self.progress.add_task(f"{indent}{level.name}", total=level.total or None, eta="")
        self._refresh()

    def _advanced(self, level: Level, note: str) -> None:
        if level.handle is not None:
            self.progress.update(level.handle, completed=level.done, total=level.total or None)
        self._refresh()

    def _closed(self, level: Level) -> None:
        if level.handle is None:
            return
        if self.levels:  # an inner level goes; the outermost stays, as it ended
            self.progress.remove_task(level.handle)
        else:
            self.progress.update(level.handle, completed=level.done, eta=self.eta_text())
        level.handle = None

    def _closed_all(self) -> None:
        self._refresh()

    def _refresh(self) -> None:
        if self.levels and self.levels[0].handle is not None:
            self.progress.update(self.levels[0].handle, eta=self.eta_text())


_current: Display = Display()


def current() -> Display:
    return _current


@contextlib.contextmanager
def display(quiet: bool = False, stream: TextIO | None = None, live: bool | None = None) -> Iterator[Display]:
    """The command's display: live on a terminal, plain lines elsewhere, silent with --quiet."""
    global _current
    stream = stream or sys.stderr
    if quiet:
        chosen: Display = Display()
    elif live if live is not None else _is_terminal(stream):
        chosen = LiveDisplay(stream)
    else:
        chosen = PlainDisplay(stream)
    previous, _current = _current, chosen
    try:
        yield chosen
    finally:
        _current = previous
        if isinstance(chosen, LiveDisplay):
            chosen.progress.stop()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
