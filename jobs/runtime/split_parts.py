"""One input through the split stage: its parts, its marker, its resume check.

The unit of work of `jobs.split` and of phase 1 of `jobs.curate` (and the S3 split bench): both
write the same parts and markers, so either resumes the other's run.
"""

from __future__ import annotations

import contextlib
import hashlib
import time

from curate import schema as S
from curate.ids import video_id_of_file
from curate.io import layout
from curate.io.retry import is_infrastructure
from curate.io.storage import (
    config_hash,
    exists,
    is_done,
    local_copy,
    mark_done,
    read_table,
    write_parquet_atomic,
)
from curate.shots.split import SplitConfig, split_video

STAGE = "split"


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
        # skipped only when this source's row already names this content: a file replaced by
        # another video that was split before (under another name) must get its row rewritten
        if vid is not None and is_done(out, STAGE, vid, cfg_hash) and _names(video_part, vid):
            return {
                "source_uri": uri,
                "video_id": vid,
                "status": S.STATUS_OK,
                "skipped": True,
                "num_clips": None,
                "seconds": time.perf_counter() - t0,
            }
        video, clips = split_video(local, cfg, video_id=vid, source_uri=uri)  # the file is hashed once
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


def _names(video_part: str, video_id: str) -> bool:
    """The source's videos part exists and its row is `video_id`'s (one row, one column read)."""
    if not exists(video_part):
        return False
    return read_table(video_part, columns=[S.VIDEO_ID]).column(S.VIDEO_ID).to_pylist() == [video_id]
