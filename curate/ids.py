"""Content-addressed ids.

`video_id` hashes the file's bytes, so a renamed or copied file gets the same id and a
rerun recognises work already done. `clip_id` derives from `video_id` and the span.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20
ID_BYTES = 16  # 128-bit blake2b: collisions are not a practical concern at dataset scale


def video_id_of_file(path: str | Path) -> str:
    """blake2b-128 of the file's bytes, hex. Raises OSError when the file can't be read."""
    h = hashlib.blake2b(digest_size=ID_BYTES)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def video_id_of_missing(uri: str) -> str:
    """An id for an input whose bytes can't be read (missing, unreadable): keyed on its name."""
    return "missing-" + hashlib.blake2b(uri.encode(), digest_size=8).hexdigest()


def clip_id(video_id: str, start_frame: int, end_frame: int) -> str:
    """`<video_id>-<start>-<end>`: readable, sortable within a video, and unique per span."""
    return f"{video_id}-{start_frame:07d}-{end_frame:07d}"


def error_clip_id(video_id: str, stage: str) -> str:
    return f"{video_id}-error-{stage}"
