"""One progress line per stage that moves: `[score] 120/1000 clips  3.2 clips/s  ETA 4m35s`.

In a terminal the line is rewritten in place (at most every 0.5 s) and ends with a newline when
the stage does; in a log (not a TTY) a line is printed every `TUBELET_PROGRESS_EVERY` seconds
(default 30), so a short run prints nothing beyond its summary and a long one shows that it
moves. The driver feeds it from the counts the workers return (`parts.drain`), never from rows.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

TTY_EVERY_S = 0.5


def log_every_s() -> float:
    try:
        return max(0.0, float(os.environ.get("TUBELET_PROGRESS_EVERY", "30")))
    except ValueError:
        return 30.0


def duration(seconds: float) -> str:
    """`42s`, `4m35s`, `2h03m`: short enough for a progress line."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Counts of one stage, shown as they arrive; `total` None: the count alone (no ETA)."""

    def __init__(
        self,
        stage: str,
        total: int | None = None,
        unit: str = "clips",
        stream: TextIO | None = None,
        clock=time.monotonic,
    ):
        self.stage, self.total, self.unit = stage, total, unit
        self.stream = stream if stream is not None else sys.stdout
        self.clock = clock
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = TTY_EVERY_S if self.tty else log_every_s()
        self.done = 0
        self.t0 = clock()
        self.last_shown = self.t0
        self.shown = False

    def line(self) -> str:
        elapsed = max(self.clock() - self.t0, 1e-9)
        rate = self.done / elapsed
        of = f"/{self.total}" if self.total is not None else ""
        text = f"[{self.stage}] {self.done}{of} {self.unit}  {rate:.2f} {self.unit}/s  {duration(elapsed)}"
        if self.total is not None and 0 < self.done < self.total and rate > 0:
            text += f"  ETA {duration((self.total - self.done) / rate)}"
        return text

    def add(self, n: int) -> None:
        self.done += n
        now = self.clock()
        if now - self.last_shown >= self.every:
            self._show()
            self.last_shown = now

    def _show(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + self.line())
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        """End the stage's line: in a terminal the final count stays on screen."""
        if self.tty and self.shown:
            self._show()
            self.stream.write("\n")
            self.stream.flush()
