"""The error policy (STYLE.md 7): a bad input is data, a bad argument stops the job."""

from __future__ import annotations

from typing import Literal

OnError = Literal["record", "raise"]


class UsageError(ValueError):
    """A bad argument or config: the message states the rule, the value seen and the fix."""


class StageError(RuntimeError):
    """A per-item failure inside a stage (becomes a status=error row under on_error='record')."""

    def __init__(self, stage: str, reason: str):
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


def one_line(exc: BaseException, limit: int = 300) -> str:
    """A one-line, bounded reason for an error row."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, StageError):
        text = exc.reason
    elif type(exc).__name__ not in text:
        text = f"{type(exc).__name__}: {text}"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_choice(name: str, value: object, allowed: tuple[object, ...]) -> None:
    if value not in allowed:
        raise UsageError(f"{name} must be one of {list(allowed)}, got {value!r}; pick one of those")


def check_range(name: str, value: float, lo: float | None = None, hi: float | None = None, fix: str = "") -> None:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rule = f"{name} must be in [{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise UsageError(f"{rule}, got {value!r}" + (f"; {fix}" if fix else ""))
