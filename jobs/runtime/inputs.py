"""Turn `--input DIR|GLOB|LISTFILE|FILE` (local or s3://...) into a sorted list of video paths/URIs.

Only names are listed here (on the driver); the bytes are read by the worker that needs them.
"""

from __future__ import annotations

import glob
from pathlib import Path

from curate.errors import UsageError, io_line
from curate.io import storage

VIDEO_EXTENSIONS = frozenset(
    {
        ".mp4",
        ".m4v",
        ".mov",
        ".mkv",
        ".webm",
        ".avi",
        ".ts",
        ".mts",
        ".mpg",
        ".mpeg",
        ".flv",
        ".wmv",
        ".3gp",
        ".ogv",
        ".mxf",
        ".y4m",
    }
)
LIST_EXTENSIONS = frozenset({".txt", ".list", ".lst"})


def list_inputs(spec: str, skipped: list[str] | None = None) -> list[str]:
    """A directory (searched recursively for video extensions), a glob, a list file (one path
    per line, '#' comments) or one video file. Paths listed in a list file are kept even if
    they do not exist: each becomes an error row, so nothing is silently lost. The other files
    a directory or prefix holds (not hidden, not a video extension) are appended to `skipped`,
    for the summary to name."""
    if not spec:
        raise UsageError("--input must name a directory, a glob, a list file or a video; got an empty value")
    if storage.is_remote(spec):
        return _list_remote(spec, skipped)
    p = Path(spec)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if not f.is_dir())
        found = [str(f) for f in files if f.suffix.lower() in VIDEO_EXTENSIONS]
        if skipped is not None:
            skipped += [
                str(f)
                for f in files
                if f.suffix.lower() not in VIDEO_EXTENSIONS and not f.name.startswith(".")
            ]
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
            return [_resolve(ln, str(base)) for ln in lines if ln and not ln.startswith("#")]
        return [str(p)]
    if glob.has_magic(spec):
        found = sorted(f for f in glob.glob(spec, recursive=True) if Path(f).is_file())
        if not found:
            raise UsageError(
                f"--input glob must match at least one file, matched none: {spec!r}; check the pattern"
            )
        return found
    raise UsageError(
        f"--input must be an existing directory, glob, list file or video, got {spec!r} (not found); "
        "check the path"
    )


def _resolve(line: str, base: str) -> str:
    """A list-file entry: absolute paths and URIs as they are, relative ones against the list's folder."""
    if storage.is_remote(line) or (not storage.is_remote(base) and Path(line).is_absolute()):
        return line
    return storage.join(base, line)


def _list_remote(spec: str, skipped: list[str] | None = None) -> list[str]:
    """An object prefix (searched recursively), a list file object, or one video object."""
    storage.check_scheme(spec, "--input")
    if glob.has_magic(spec):
        raise UsageError(
            f"--input on object storage must be a prefix, a list file or one object, got the glob "
            f"{spec!r}; pass the prefix (s3://bucket/raw) or a list file"
        )
    try:
        if storage.is_file(spec):
            if Path(spec).suffix.lower() in LIST_EXTENSIONS:
                lines = [ln.strip() for ln in storage.read_bytes(spec).decode("utf-8").splitlines()]
                return [_resolve(ln, storage.parent(spec)) for ln in lines if ln and not ln.startswith("#")]
            return [spec]
        listed = storage.list_files(spec, recursive=True)
        found = [u for u in listed if Path(u).suffix.lower() in VIDEO_EXTENSIONS]
        if skipped is not None:
            skipped += [u for u in listed if Path(u).suffix.lower() not in VIDEO_EXTENSIONS]
    except (OSError, ValueError) as e:
        raise UsageError(
            f"--input {spec!r} must be listable, got: {io_line(e)}; check the bucket name, "
            "AWS_ENDPOINT_URL and the AWS_* credentials"
        ) from e
    bucket = spec.split("://", 1)[1].split("/", 1)[0]
    if not found and not storage.exists(f"{storage.scheme(spec)}://{bucket}"):
        raise UsageError(
            f"--input bucket must exist, {bucket!r} does not (in {spec!r}); check the bucket name "
            "and AWS_ENDPOINT_URL"
        )
    if not found:
        raise UsageError(
            f"--input prefix must contain videos ({', '.join(sorted(VIDEO_EXTENSIONS))}), found none "
            f"under {spec!r}; check the bucket and prefix"
        )
    return found


SKIPPED_EXAMPLES = 20  # names kept in a summary (the count is exact)


def skipped_summary(skipped: list[str]) -> dict:
    """The summary fields for the files an --input folder held that are not videos."""
    return {"inputs_skipped": len(skipped), "inputs_skipped_examples": skipped[:SKIPPED_EXAMPLES]}


def skipped_line(summary: dict) -> str | None:
    """`skipped 2 non-video file(s) in --input: a.txt, b.jpg` (or None when there were none)."""
    n = summary.get("inputs_skipped", 0)
    if not n:
        return None
    names = ", ".join(storage.basename(u) for u in summary.get("inputs_skipped_examples", [])[:5])
    return f"skipped {n} non-video file(s) in --input: {names}{', ...' if n > 5 else ''}"
