"""One input through the split stage: its parts, its marker, its resume check, and the clip
sets a changed source leaves behind.

The unit of work of `jobs.split` and of phase 1 of `jobs.curate` (and the S3 split bench): both
write the same parts and markers, so either resumes the other's run.

Sources change (README "Output layout and resume"): a source's videos row names the content it
holds now (`video_id`, a hash of its bytes). When a rerun finds other content under the same
source (a file replaced, a list entry missing before and present now), the clip set its row
named before is no longer this source's. It is retracted only once no source names it (byte-
identical copies share one clip set): `process_one` records the old id under
OUT/_done/split-retract/ *before* rewriting the row, and the driver's `retract_replaced` removes
the clip sets no videos row names, after every input is split. A kill between the two leaves the
record, so the next run still retracts.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable

from curate import schema as S
from curate.ids import video_id_of_file
from curate.io import layout
from curate.io.retry import is_infrastructure
from curate.io.storage import (
    config_hash,
    delete,
    is_done,
    list_files,
    list_parts,
    local_copy,
    mark_done,
    read_table,
    write_parquet_atomic,
)
from curate.io.uri import basename
from curate.shots.split import SplitConfig, split_video

STAGE = "split"
RETRACT = "split-retract"  # OUT/_done/split-retract/<video_id>: a clip set a source stopped naming


def source_key(uri: str) -> str:
    return hashlib.blake2b(uri.encode(), digest_size=8).hexdigest()


def clips_part(out: str, video_id: str) -> str:
    """OUT/clips/part-<video_id>.parquet: one video's clip records."""
    return layout.part_path(layout.folder(out, layout.CLIPS), video_id)


def process_one(uri: str, cfg: SplitConfig, out: str) -> dict:
    """Split one input and write its parts atomically; the unit of work and of resume."""
    t0 = time.perf_counter()
    cfg_hash = config_hash(cfg)
    video_part = layout.part_path(layout.folder(out, layout.VIDEOS), source_key(uri))
    # a remote video is fetched once into this worker's temp dir (removed on exit), hashed and
    # split there; a missing object or bucket falls through to probe's error row. A read that
    # still fails after its retries (or a full temp disk) ends the job instead: a row written
    # for it would be taken as this input's result (later stages mark their parts), so nothing
    # is written and the rerun reads it again.
    with contextlib.ExitStack() as stack:
        try:
            local = stack.enter_context(local_copy(uri))
            vid: str | None = video_id_of_file(local)
        except OSError as e:
            if is_infrastructure(e):
                raise
            local, vid = uri, None
        named = named_content(video_part)
        # skipped only when this source's row already names this content: a file replaced by
        # another video that was split before (under another name) must get its row rewritten
        if vid is not None and vid == named and is_done(out, STAGE, vid, cfg_hash):
            return {
                "source_uri": uri,
                "video_id": vid,
                "status": S.STATUS_OK,
                "skipped": True,
                "num_clips": None,
                "seconds": time.perf_counter() - t0,
            }
        video, clips = split_video(local, cfg, video_id=vid, source_uri=uri)  # the file is hashed once
    if named is not None and named != video[S.VIDEO_ID]:
        # important: recorded before the row stops naming it, so a kill in between still retracts
        mark_done(out, RETRACT, named, "", source_uri=uri, now=video[S.VIDEO_ID])
    write_parquet_atomic(S.table_from_rows(clips), clips_part(out, video[S.VIDEO_ID]))
    write_parquet_atomic(S.table_from_rows([video], S.VIDEO_SCHEMA), video_part)
    # important: the marker goes last; a kill before it just redoes this video.
    mark_done(out, STAGE, video[S.VIDEO_ID], cfg_hash, source_uri=uri, num_clips=video.get(S.NUM_CLIPS))
    return {
        "source_uri": uri,
        "video_id": video[S.VIDEO_ID],
        "status": video[S.STATUS],
        "failed_stage": video.get(S.FAILED_STAGE),
        "error": video.get(S.ERROR),
        "num_clips": sum(1 for c in clips if c[S.STATUS] == S.STATUS_OK),
        "skipped": False,
        "seconds": time.perf_counter() - t0,
    }


def named_content(video_part: str) -> str | None:
    """The video_id the source's videos row names (one column, one request), or None if it has none."""
    try:
        ids = read_table(video_part, columns=[S.VIDEO_ID]).column(S.VIDEO_ID).to_pylist()
    except FileNotFoundError:
        return None
    return ids[0] if len(ids) == 1 else None


def retract_replaced(out: str, downstream: Callable[[list[str]], None] | None = None) -> list[str]:
    """Remove the clip sets (clips part and split marker) that sources stopped naming and that no
    videos row names now; returns their video ids. `downstream(ids)` then removes what later
    stages made of them, before the records go (a kill in between repeats both). One listing
    when nothing changed; otherwise one column of every videos part is read, O(inputs)."""
    records = list_files(layout.markers_dir(out, RETRACT))
    if not records:
        return []
    named = set()
    for part in list_parts(layout.folder(out, layout.VIDEOS)):
        named.update(read_table(part, columns=[S.VIDEO_ID]).column(S.VIDEO_ID).to_pylist())
    gone = []
    for record in records:
        vid = basename(record)
        if vid not in named:
            delete(clips_part(out, vid))
            delete(layout.marker(out, STAGE, vid))  # important: after its part (a kill redoes both)
            gone.append(vid)
    if gone and downstream is not None:
        downstream(sorted(gone))
    for record in records:
        delete(record)
    return sorted(gone)
