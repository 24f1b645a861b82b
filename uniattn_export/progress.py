"""Progress of long work (calibration, generation, benchmarks), on stderr so that JSON
printed on stdout stays machine-readable.

On a terminal: rich progress bars. Without one (logs, CI, pipes), a bar would print
nothing until the end, so plain lines say the work is alive instead: one when a task
starts or changes stage, one at every tenth of its total, one when it ends.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")

stderr_console = Console(stderr=True)

PLAIN_LINES_PER_TASK = 10


class PlainProgress:
    """The part of rich's Progress interface this package uses, as plain lines."""

    def __init__(self):
        self._tasks: dict[int, dict] = {}

    def add_task(self, description: str, total: float | None = None, **_) -> int:
        task = len(self._tasks)
        self._tasks[task] = {"description": description, "total": total, "completed": 0,
                             "start": time.monotonic(), "reported": 0}  # fmt: skip
        self._line(task)
        return task

    def advance(self, task: int, advance: float = 1) -> None:
        state = self._tasks[task]
        state["completed"] += advance
        total = state["total"]
        if total:  # a line at each tenth crossed, and at the end
            tenth = int(PLAIN_LINES_PER_TASK * min(state["completed"], total) // total)
            if tenth > state["reported"]:
                state["reported"] = tenth
                self._line(task)

    def update(self, task: int, *, description: str | None = None, **_) -> None:
        if description is not None and description != self._tasks[task]["description"]:
            self._tasks[task]["description"] = description
            self._line(task)

    def track(self, items: Iterable[T], total: int | None = None, description: str = "working") -> Iterator[T]:
        if total is None and hasattr(items, "__len__"):
            total = len(items)
        task = self.add_task(description, total=total)
        for item in items:
            yield item
            self.advance(task)

    def _line(self, task: int) -> None:
        state = self._tasks[task]
        done = f"{state['completed']:g}" + (f"/{state['total']:g}" if state["total"] else "")
        elapsed = time.monotonic() - state["start"]
        print(f"{state['description']}: {done} ({elapsed:.0f} s)", file=sys.stderr, flush=True)


@contextmanager
def progress_bar() -> Iterator[Progress | PlainProgress]:
    if not stderr_console.is_terminal:
        yield PlainProgress()
        return
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr_console,
        transient=False,
    )
    with progress:
        yield progress


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    with progress_bar() as progress:
        yield from progress.track(items, total=total, description=description)
