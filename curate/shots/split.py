"""Scene detection -> spans -> clip records (min/max length, trims, windows).

Each video is decoded once, at a few thousand pixels per frame, and streamed through the
configured detector (`content`: ours; `transnetv2` and `hybrid`: curate/shots/transnet.py,
curate/shots/hybrid.py). Frames of gradual transitions and black segments never enter a clip;
a clip starts on the first frame of its shot. Times come from presentation timestamps.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from curate import __version__
from curate import schema as S
from curate.errors import OnError, StageError, UsageError, check_choice, one_line
from curate.ids import clip_id, error_clip_id
from curate.io.storage import config_hash
from curate.shots.detect import Detector, Transitions
from curate.shots.detect_content import ContentConfig, ContentDetector
from curate.video.decode import SmallFrame, iter_small_yuv
from curate.video.probe import finish_probe, probe

DetectorName = Literal["content", "transnetv2", "hybrid"]
DETECTORS: tuple[str, ...] = ("content", "transnetv2", "hybrid")


@dataclass(frozen=True)
class SplitConfig:
    detector: DetectorName = "content"
    min_seconds: float = 2.0  # shorter shots give no clip
    max_seconds: float = 20.0  # longer shots are cut into equal windows
    trim_seconds: float = 0.0  # dropped at each end of every shot
    content: ContentConfig = field(default_factory=ContentConfig)
    device: str = "auto"  # for neural detectors: auto | cpu | cuda
    on_error: OnError = "record"

    def __post_init__(self) -> None:
        check_choice("detector", self.detector, DETECTORS)
        if not self.min_seconds > 0:
            raise UsageError(f"min_seconds must be > 0, got {self.min_seconds}; pass e.g. --min-seconds 2")
        if self.max_seconds < 2 * self.min_seconds:
            raise UsageError(
                f"max_seconds must be at least twice min_seconds (so windows of a long shot stay above the "
                f"minimum), got max={self.max_seconds}, min={self.min_seconds}; raise --max-seconds"
            )
        if self.trim_seconds < 0:
            raise UsageError(f"trim_seconds must be >= 0, got {self.trim_seconds}; pass 0 to keep shot edges")


def make_detector(cfg: SplitConfig) -> Detector:
    if cfg.detector == "content":
        return ContentDetector(cfg.content)
    if cfg.detector == "transnetv2":
        from curate.shots.transnet import TransNetDetector

        return TransNetDetector(device=cfg.device)
    from curate.shots.hybrid import HybridDetector

    return HybridDetector(device=cfg.device)


@dataclass(frozen=True)
class Span:
    start: int  # first frame
    end: int  # exclusive
    shot_index: int
    transition_before: str
    score_start: float
    score_end: float


def _end_time(pts: np.ndarray, end: int, step: float) -> float:
    return float(pts[end]) if end < len(pts) else float(pts[-1]) + step


def clip_spans(tr: Transitions, cfg: SplitConfig) -> tuple[list[Span], int]:
    """Spans of clips from a detector's output; also returns how many shots were too short."""
    n = tr.num_frames
    if n == 0:
        return [], 0
    pts = tr.pts
    step = float(np.median(np.diff(pts))) if n > 1 else 1.0 / 25
    score = tr.frame_score if tr.frame_score is not None else np.zeros(n, np.float32)
    allowed = np.ones(n, bool)
    kind_at = {}
    for a, b, kind in tr.excluded:
        allowed[a : b + 1] = False
        kind_at[b + 1] = kind  # the transition that precedes frame b+1
    cut_set = set(tr.cuts)
    # shots: runs of allowed frames, broken at hard cuts
    shots: list[tuple[int, int, str]] = []
    start: int | None = None
    before = "start"
    for i in range(n + 1):
        boundary = i == n or not allowed[i] or (i in cut_set and start is not None)
        if start is not None and boundary:
            shots.append((start, i, before))
            start = None
        if i < n and allowed[i] and start is None:
            start = i
            before = "start" if i == 0 else "cut" if i in cut_set else kind_at.get(i, "cut")
    spans: list[Span] = []
    too_short = 0
    for shot_index, (a, b, before) in enumerate(shots):
        t0 = float(pts[a]) + cfg.trim_seconds
        t1 = _end_time(pts, b, step) - cfg.trim_seconds
        dur = t1 - t0
        if dur < cfg.min_seconds - 1e-6:
            too_short += 1
            continue
        windows = max(1, math.ceil(dur / cfg.max_seconds - 1e-9))
        edges = [t0 + dur * k / windows for k in range(windows + 1)]
        # frame index of each edge: first frame at or after the time (pts are in display order)
        idx = [int(np.searchsorted(pts, t - 1e-6, side="left")) for t in edges]
        idx[-1] = min(idx[-1], b)
        for k in range(windows):
            s, e = max(idx[k], a), idx[k + 1]
            if e <= s:
                continue
            spans.append(
                Span(
                    s,
                    e,
                    shot_index,
                    before if k == 0 else "window",
                    float(score[s]),
                    float(score[e]) if e < n else 0.0,
                )
            )
    return spans, too_short


def clip_rows(
    video: dict[str, Any], tr: Transitions, spans: list[Span], method: str, cfg_hash: str
) -> list[dict]:
    pts = tr.pts
    step = float(np.median(np.diff(pts))) if len(pts) > 1 else 1.0 / 25
    rows = []
    for sp in spans:
        t0, t1 = float(pts[sp.start]), _end_time(pts, sp.end, step)
        rows.append(
            {
                S.CLIP_ID: clip_id(video[S.VIDEO_ID], sp.start, sp.end),
                S.VIDEO_ID: video[S.VIDEO_ID],
                S.SOURCE_URI: video[S.SOURCE_URI],
                S.START_FRAME: sp.start,
                S.END_FRAME: sp.end,
                S.START_PTS: t0,
                S.END_PTS: t1,
                S.FPS: (sp.end - sp.start) / (t1 - t0) if t1 > t0 else None,
                S.WIDTH: video[S.WIDTH],
                S.HEIGHT: video[S.HEIGHT],
                S.SHOT_INDEX: sp.shot_index,
                S.SPLIT_METHOD: method,
                S.TRANSITION_BEFORE: sp.transition_before,
                # NaN: the detector never scored that boundary (hybrid): null, not 0.0
                S.BOUNDARY_SCORE_START: None if math.isnan(sp.score_start) else sp.score_start,
                S.BOUNDARY_SCORE_END: None if math.isnan(sp.score_end) else sp.score_end,
                S.STATUS: S.STATUS_OK,
                S.CONFIG_HASH: cfg_hash,
                S.TUBELET_VERSION: __version__,
            }
        )
    return rows


def error_clip_row(video: dict[str, Any], stage: str, reason: str, cfg_hash: str) -> dict[str, Any]:
    return {
        S.CLIP_ID: error_clip_id(video[S.VIDEO_ID], stage),
        S.VIDEO_ID: video[S.VIDEO_ID],
        S.SOURCE_URI: video[S.SOURCE_URI],
        S.STATUS: S.STATUS_ERROR,
        S.FAILED_STAGE: stage,
        S.ERROR: reason,
        S.CONFIG_HASH: cfg_hash,
        S.TUBELET_VERSION: __version__,
    }


class _Guarded:
    """Wraps the frame stream: a decode error after some frames ends the stream (keeping the
    head of a truncated file) and is remembered; one before any frame is re-raised."""

    def __init__(self, frames: Iterator[tuple[Any, SmallFrame]]):
        self.frames = frames
        self.count = 0
        self.error: str | None = None

    def __iter__(self) -> Iterator[SmallFrame]:
        try:
            for _, fr in self.frames:
                self.count += 1
                yield fr
        except StageError as e:
            if self.count == 0:
                raise
            self.error = e.reason


def split_video(
    path: str | Path,
    cfg: SplitConfig,
    detector: Detector | None = None,
    video_id: str | None = None,
    source_uri: str | None = None,
) -> tuple[dict, list[dict]]:
    """Probe and split one video. Returns (videos-table row, clip rows); never raises under
    on_error="record": failures become a status=error video row and one error clip row.
    `video_id`: the content id when the caller already hashed the file; `source_uri`: the
    recorded source when `path` is a worker-local copy of a remote object."""
    video, rows, _ = split_video_detailed(path, cfg, detector, video_id, source_uri)
    return video, rows


def split_video_detailed(
    path: str | Path,
    cfg: SplitConfig,
    detector: Detector | None = None,
    video_id: str | None = None,
    source_uri: str | None = None,
) -> tuple[dict, list[dict], Transitions | None]:
    """`split_video`, also returning the detector's raw output (None when it did not run)."""
    tr: Transitions | None = None
    cfg_hash = config_hash(cfg)
    video = probe(path, video_id=video_id, source_uri=source_uri)
    video[S.CONFIG_HASH] = cfg_hash
    if video[S.STATUS] != S.STATUS_OK:
        if cfg.on_error == "raise":
            raise StageError("probe", video[S.ERROR])
        return video, [error_clip_row(video, "probe", video[S.ERROR], cfg_hash)], None
    detector = detector or make_detector(cfg)
    try:
        stream = _Guarded(iter_small_yuv(path, target_area=detector.target_area, size=detector.frame_size))
        declared = video.get(S.DURATION)  # what the container says, before the decoded frames overwrite it
        tr = detector.detect(iter(stream))
        finish_probe(video, tr.pts)
        spans, too_short = clip_spans(tr, cfg)
        # A truncated file keeps its decodable head: the video row stays ok (its clips are whole
        # and decodable) and `error` carries this warning. Nothing decodable is a probe error row.
        decoded = video.get(S.DURATION) or 0.0
        if stream.error:
            video[S.ERROR] = f"truncated: kept the first {stream.count} frames; {stream.error}"
        elif declared and decoded < declared - max(1.0, 0.05 * declared):
            video[S.ERROR] = (
                f"truncated: decoded {decoded:.2f} s of the {declared:.2f} s the container declares; "
                f"kept the first {stream.count} frames"
            )
        if not spans:
            dur = video.get(S.DURATION) or 0.0
            raise StageError(
                "split",
                f"no clip of at least {cfg.min_seconds:g} s: {tr.num_frames} frames ({dur:.2f} s), "
                f"{too_short} shot(s) too short, {len(tr.excluded)} transition/black range(s)",
            )
    except Exception as e:
        if cfg.on_error == "raise":
            raise
        reason = one_line(e)
        video.update({S.STATUS: S.STATUS_ERROR, S.FAILED_STAGE: "split", S.ERROR: reason, S.NUM_CLIPS: 0})
        return video, [error_clip_row(video, "split", reason, cfg_hash)], tr
    rows = clip_rows(video, tr, spans, detector.name, cfg_hash)
    video[S.NUM_CLIPS] = len(rows)
    return video, rows, tr
