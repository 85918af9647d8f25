"""A progress line for long work (SPEC §10: "long work shows progress"): how much is done, the
rate and, when the total is known, the time left. Dependency-free.

On a terminal the line is redrawn in place (at most every REDRAW_TTY seconds); otherwise a plain
line starting with "... ", like the CLI's other progress lines, at most every REDRAW_PLAIN
seconds. Work that ends before the first redraw prints nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol, TextIO

REDRAW_TTY = 0.25  # seconds between redraws on a terminal
REDRAW_PLAIN = 5.0  # seconds between plain lines (a log, a pipe, Airflow)
CLEAR_TO_END = "\x1b[K"

Tick = Callable[[int], None]  # tick(n): n more rows (files, bytes) are done


class Meter(Protocol):
    """Opens a progress line for a piece of work: `with meter("verifying batch 0", "rows", n) as tick:`."""

    def __call__(self, what: str, unit: str = "rows", total: int | None = None) -> AbstractContextManager[Tick]: ...


def ignore(_: int) -> None:
    """A Tick that counts nothing."""
    return None


@contextmanager
def silent(what: str, unit: str = "rows", total: int | None = None) -> Iterator[Tick]:
    """A Meter that shows nothing (--quiet, --json, or no one watching)."""
    yield ignore


def amount(n: float, unit: str) -> str:
    """`n` units in words: bytes in kB/MB/GB (powers of 1000), anything else with thousands separators."""
    if unit != "bytes":
        return f"{n:,.0f} {unit}"
    for scale, prefix in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n >= scale:
            return f"{n / scale:.1f} {prefix}"
    return f"{n:.0f} bytes"


def duration(seconds: float) -> str:
    """Whole seconds as `42s`, `3:07` or `1:02:03`."""
    s = int(seconds + 0.5)
    if s < 60:
        return f"{s}s"
    minutes, s = divmod(s, 60)
    return f"{minutes}:{s:02d}" if minutes < 60 else f"{minutes // 60}:{minutes % 60:02d}:{s:02d}"


class Bar:
    """The progress of one piece of work of `total` units (None: unknown), written to `stream`."""

    def __init__(self, what: str, unit: str = "rows", total: int | None = None, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, tty: bool | None = None) -> None:
        self.what, self.unit, self.total = what, unit, total
        self.stream = sys.stderr if stream is None else stream
        self.tty = _isatty(self.stream) if tty is None else tty
        self.every = REDRAW_TTY if self.tty else REDRAW_PLAIN
        self.clock = clock
        self.start = self.drawn = clock()
        self.done = 0
        self.shown = False

    def advance(self, n: int = 1) -> None:
        """`n` more units are done; redraws when it is time to."""
        self.done += n
        now = self.clock()
        if now - self.drawn >= self.every:
            self._draw(self.text(now), now)

    def text(self, now: float | None = None) -> str:
        """`what: done of total (percent), rate, ETA` as of `now` (default: the clock)."""
        elapsed = (self.clock() if now is None else now) - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.total:
            done = f"{self.done:,}" if self.unit != "bytes" else amount(self.done, self.unit)
            shown = f"{self.what}: {done} of {amount(self.total, self.unit)} ({100 * self.done // self.total}%)"
        else:
            shown = f"{self.what}: {amount(self.done, self.unit)}"
        shown += f", {amount(rate, self.unit)}/s"
        if self.total and rate > 0 and self.done < self.total:
            shown += f", ETA {duration((self.total - self.done) / rate)}"
        return shown

    def close(self) -> None:
        """The last line, if any was shown: how much was done, in how long, at what rate."""
        if not self.shown:
            return
        now = self.clock()
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        self._draw(f"{self.what}: {amount(self.done, self.unit)} in {duration(elapsed)} "
                   f"({amount(rate, self.unit)}/s)", now)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, text: str, now: float) -> None:
        self.stream.write(f"\r... {text}{CLEAR_TO_END}" if self.tty else f"... {text}\n")
        self.stream.flush()
        self.drawn, self.shown = now, True


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-less stream
        return False


@contextmanager
def bar(what: str, unit: str = "rows", total: int | None = None, stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic, tty: bool | None = None) -> Iterator[Tick]:
    """A Meter drawing a Bar on `stream` (default stderr); the line is ended when the work ends,
    by an error too, so a message after it starts on a line of its own."""
    shown = Bar(what, unit, total, stream, clock, tty)
    try:
        yield shown.advance
    finally:
        shown.close()
