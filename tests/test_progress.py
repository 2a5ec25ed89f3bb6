"""Progress lines: the count, rate and ETA a stage shows as its workers' counts arrive."""

from __future__ import annotations

import io

import pyarrow as pa

from jobs.runtime import parts
from jobs.runtime.progress import Progress, duration
from latents.dit.train import progress_line


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_a_line_per_interval_with_rate_and_eta(monkeypatch):
    monkeypatch.setenv("TUBELET_PROGRESS_EVERY", "10")
    clock, out = Clock(), io.StringIO()
    p = Progress("score", 40, "clips", stream=out, clock=clock)
    clock.t = 5.0
    p.add(5)
    assert out.getvalue() == ""  # under the interval: nothing yet
    clock.t = 10.0
    p.add(5)  # 10 of 40 in 10 s: 1 clip/s, 30 left
    assert out.getvalue() == "[score] 10/40 clips  1.00 clips/s  10s  ETA 30s\n"
    clock.t = 12.0
    p.add(30)
    p.close()  # a log gets no closing line: the job's summary follows
    assert out.getvalue().count("\n") == 1


def test_a_terminal_line_is_rewritten_in_place_and_ends_with_the_total():
    clock, out = Clock(), Terminal()
    p = Progress("encode", None, "clips", stream=out, clock=clock)
    for _ in range(3):
        clock.t += 1.0
        p.add(2)
    p.close()
    text = out.getvalue()
    assert text.count("\r\x1b[2K") == 4 and text.endswith("[encode] 6 clips  2.00 clips/s  3s\n")
    assert "ETA" not in text  # no total, no ETA


def test_drain_moves_the_line_by_the_counted_columns(monkeypatch):
    monkeypatch.setenv("TUBELET_PROGRESS_EVERY", "0")

    class Plan:
        def iter_batches(self, **_):
            yield pa.table({"ok": [2, 1], "error": [0, 1], "bytes": [100, 100]})
            yield pa.table({"ok": [3], "error": [0], "bytes": [50]})

    out = io.StringIO()
    totals = parts.drain(Plan(), Progress("caption", 7, "clips", stream=out), counted=("ok", "error"))
    assert totals == {"ok": 6, "error": 1, "bytes": 250}
    assert [ln.split()[1] for ln in out.getvalue().splitlines()] == ["4/7", "7/7"]


def test_durations_and_the_trainer_line():
    assert [duration(s) for s in (4.4, 275, 7380)] == ["4s", "4m35s", "2h03m"]
    assert (
        progress_line(120, 20, 1000, 0.41318, 50.0)
        == "[train] step 120/1000  loss 0.4132  2.00 steps/s  ETA 7m20s"
    )
    assert "ETA" not in progress_line(1000, 0, 1000, None, 10.0)
