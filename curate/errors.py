"""The error policy (README, "One command line for every job"): a bad input is data, a bad argument
stops the job."""

from __future__ import annotations

import re
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


def io_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an I/O error (a storage or network failure), without a server's request id."""
    text = str(exc).strip()
    msg = text.splitlines()[0] if text else type(exc).__name__
    return re.sub(r"\s*\(Request ID: [^)]*\)?", "", msg)[:limit]


# a quoted string holding a path separator, a bare absolute/relative path, a bare file name with an extension
_QUOTED_PATH = re.compile(r"""(['"])[^'"\n]*[/\\][^'"\n]*\1""")
_BARE_PATH = re.compile(r"(?<![\w:/])(?:[A-Za-z]:\\|\.{0,2}/)[^\s'\",;()]+")
_FILE_NAME = re.compile(r"(?<![\w/])[\w.+-]+\.[A-Za-z][A-Za-z0-9]{1,4}\b(?!\()")
_URI = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+")


def error_key(reason: str | None) -> str:
    """The reason of an error row without the file it happened to, so `errors_by_reason` groups:
    "InvalidDataError: ... input: '/data/a.mp4'" and the same for b.mp4 -> one key with "<file>"."""
    text = reason or ""
    for pattern in (_URI, _QUOTED_PATH, _BARE_PATH, _FILE_NAME):
        text = pattern.sub("<file>", text)
    return text


def check_choice(name: str, value: object, allowed: tuple[object, ...]) -> None:
    if value not in allowed:
        raise UsageError(f"{name} must be one of {list(allowed)}, got {value!r}; pick one of those")


def check_range(
    name: str, value: float, lo: float | None = None, hi: float | None = None, fix: str = ""
) -> None:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rule = f"{name} must be in [{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise UsageError(f"{rule}, got {value!r}" + (f"; {fix}" if fix else ""))
