"""Sources change: a rerun reconciles each source's rows with what it holds now (issue: "error
rows are never retracted"). A file replaced under its name, or a list entry missing once and
present later, leaves no clip or error rows of its old content, unless another source still
holds that content (identical copies share one clip set). jobs.curate carries the retraction
through its scored parts and shards."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curate import schema as S
from curate.io import layout
from curate.shots.split import SplitConfig
from curate.synthetic.synth import Segment, make_video
from jobs.runtime import split_parts
from jobs.runtime.split_parts import RETRACT, STAGE, process_one, retract_replaced

CFG = SplitConfig(min_seconds=0.5, max_seconds=10.0)


def _video(path: Path, pattern: int) -> Path:
    make_video(
        path,
        [Segment("shot", 24, pattern=pattern), Segment("shot", 24, pattern=pattern + 1)],
        width=96,
        height=64,
    )
    return path


def _clip_sets(out: Path) -> set[str]:
    return {layout.key_of(p) for p in (out / "clips").glob("part-*.parquet")}


def _names(out: Path) -> dict[str, str]:
    t = pq.read_table(out / "videos", columns=[S.SOURCE_URI, S.VIDEO_ID])
    return dict(zip(t.column(S.SOURCE_URI).to_pylist(), t.column(S.VIDEO_ID).to_pylist()))


def _markers(out: Path, stage: str) -> set[str]:
    d = out / "_done" / stage
    return {p.name for p in d.iterdir()} if d.is_dir() else set()


def test_a_replaced_file_leaves_no_rows_of_its_old_content(tmp_path):
    out, src = tmp_path / "out", _video(tmp_path / "a.mp4", 0)
    old = process_one(str(src), CFG, str(out))["video_id"]
    _video(src, 3)  # other content under the same name
    new = process_one(str(src), CFG, str(out))["video_id"]
    assert new != old and _clip_sets(out) == {old, new}  # until every input is split
    assert _markers(out, RETRACT) == {old}
    assert retract_replaced(str(out)) == [old]
    assert _clip_sets(out) == {new} and _names(out) == {str(src): new}
    assert _markers(out, STAGE) == {new} and _markers(out, RETRACT) == set()
    assert retract_replaced(str(out)) == []  # nothing left to do
    assert process_one(str(src), CFG, str(out))["skipped"]  # and the rerun resumes


def test_a_list_entry_missing_then_present_loses_its_error_rows(tmp_path):
    out, src = tmp_path / "out", tmp_path / "late.mp4"
    first = process_one(str(src), CFG, str(out))
    assert first["status"] == S.STATUS_ERROR and _clip_sets(out) == {first["video_id"]}
    _video(src, 1)
    now = process_one(str(src), CFG, str(out))
    assert now["status"] == S.STATUS_OK
    assert retract_replaced(str(out)) == [first["video_id"]]
    clips = pq.read_table(out / "clips")
    assert set(clips.column(S.STATUS).to_pylist()) == {S.STATUS_OK}
    assert set(clips.column(S.VIDEO_ID).to_pylist()) == {now["video_id"]}


def test_a_clip_set_another_copy_still_names_is_kept(tmp_path):
    out = tmp_path / "out"
    a = _video(tmp_path / "a.mp4", 0)
    b = tmp_path / "b.mp4"
    shutil.copyfile(a, b)
    shared = process_one(str(a), CFG, str(out))["video_id"]
    assert process_one(str(b), CFG, str(out))["video_id"] == shared
    _video(a, 3)
    new = process_one(str(a), CFG, str(out))["video_id"]
    assert retract_replaced(str(out)) == []  # b.mp4 still holds that content
    assert _clip_sets(out) == {shared, new} and _names(out) == {str(a): new, str(b): shared}
    assert _markers(out, RETRACT) == set()


def test_a_kill_during_retraction_is_finished_by_the_rerun(tmp_path):
    out, src = tmp_path / "out", _video(tmp_path / "a.mp4", 0)
    old = process_one(str(src), CFG, str(out))["video_id"]
    _video(src, 3)
    process_one(str(src), CFG, str(out))
    seen: list[list[str]] = []

    def killed(gone: list[str]) -> None:
        seen.append(gone)
        raise KeyboardInterrupt  # after the clip set went, before the downstream stages' rows did

    with pytest.raises(KeyboardInterrupt):
        retract_replaced(str(out), killed)
    assert _markers(out, RETRACT) == {old}  # the record outlives the kill
    assert retract_replaced(str(out), seen.append) == [old]
    assert seen == [[old], [old]] and _markers(out, RETRACT) == set()


def test_one_request_tells_a_source_row_and_its_content(tmp_path):
    out, src = tmp_path / "out", _video(tmp_path / "a.mp4", 0)
    part = layout.part_path(layout.folder(str(out), layout.VIDEOS), split_parts.source_key(str(src)))
    assert split_parts.named_content(part) is None
    vid = process_one(str(src), CFG, str(out))["video_id"]
    assert split_parts.named_content(part) == vid


@pytest.mark.ray
@pytest.mark.slow
def test_curate_after_a_source_changed_trains_on_its_new_content_only(tmp_path, local_ray):
    from jobs import curate

    videos, out = tmp_path / "in", tmp_path / "out"
    videos.mkdir()
    a, b = _video(videos / "a.mp4", 0), _video(videos / "b.mp4", 5)
    args = [
        "--input",
        str(videos),
        "--output",
        str(out),
        "--preset",
        "smoke",
        "--address",
        "local",
        "--no-report",
        "--min-seconds",
        "0.5",
    ]
    assert curate.cli(args) == 0
    before = _names(out)
    _video(a, 3)
    assert curate.cli(args) == 0
    now = _names(out)
    assert now[str(b)] == before[str(b)] and now[str(a)] != before[str(a)]
    current = set(now.values())
    for folder in ("clips", "scored", "captions", "latents"):
        vids = set(pq.read_table(out / folder, columns=[S.VIDEO_ID]).column(S.VIDEO_ID).to_pylist())
        assert vids == current, folder
    summary = (out / "summary" / "curate.json").read_text()
    assert '"clip_sets_retracted": 1' in summary
