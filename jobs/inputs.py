"""Turn `--input DIR|GLOB|LISTFILE|FILE` into a sorted list of video paths."""

from __future__ import annotations

import glob
from pathlib import Path

from curate.errors import UsageError

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".mpg", ".mpeg", ".flv", ".wmv",
     ".3gp", ".ogv", ".mxf", ".y4m"}
)
LIST_EXTENSIONS = frozenset({".txt", ".list", ".lst"})


def list_inputs(spec: str) -> list[str]:
    """A directory (searched recursively for video extensions), a glob, a list file (one path
    per line, '#' comments) or one video file. Paths listed in a list file are kept even if
    they do not exist: each becomes an error row, so nothing is silently lost."""
    if not spec:
        raise UsageError("--input must name a directory, a glob, a list file or a video; got an empty value")
    p = Path(spec)
    if p.is_dir():
        found = sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in VIDEO_EXTENSIONS and not f.is_dir())
        if not found:
            raise UsageError(
                f"--input directory must contain videos ({', '.join(sorted(VIDEO_EXTENSIONS))}), "
                f"found none in {spec!r}; check the path"
            )
        return found
    if p.is_file():
        if p.suffix.lower() in LIST_EXTENSIONS:
            base = p.parent
            lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
            return [str(Path(ln) if Path(ln).is_absolute() else base / ln) for ln in lines if ln and not ln.startswith("#")]
        return [str(p)]
    if glob.has_magic(spec):
        found = sorted(f for f in glob.glob(spec, recursive=True) if Path(f).is_file())
        if not found:
            raise UsageError(f"--input glob must match at least one file, matched none: {spec!r}; check the pattern")
        return found
    raise UsageError(
        f"--input must be an existing directory, glob, list file or video, got {spec!r} (not found); check the path"
    )
