"""The jobs.split Ray plan: local run, resume after SIGKILL, and `ray job submit` on 127.0.0.1."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curate import schema as S
from curate.io.storage import read_parts
from tests.media import bad_inputs, two_shot_video
from tests.raycluster import ray_head, submit

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.ray


def _env():
    env = dict(os.environ, RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _clip_set(out: Path) -> list[tuple]:
    t = read_parts(out / "clips", S.CLIP_SCHEMA)
    return sorted(
        zip(
            t.column(S.CLIP_ID).to_pylist(),
            t.column(S.SOURCE_URI).to_pylist(),
            t.column(S.START_FRAME).to_pylist(),
            t.column(S.END_FRAME).to_pylist(),
        )
    )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("in") / "input dir ü"
    for i in range(6):
        two_shot_video(d / f"v{i}.mp4", seconds=2.5 + 0.25 * i)
    bad = bad_inputs(d / "bad", d / "v0.mp4")
    bad["missing"].unlink(missing_ok=True)
    (d / "notes.txt").write_text("not a video: skipped, and named in the summary")
    (d / "bad" / "poster.jpg").write_bytes(b"\xff\xd8 not a video either")
    (d / ".DS_Store").write_bytes(b"hidden: not listed")
    return d


def _run(inputs, out, env=None, **kw):
    return subprocess.run(
        [sys.executable, "-m", "jobs.split", "--input", str(inputs), "--output", str(out)],
        capture_output=True,
        text=True,
        env=env or _env(),
        cwd=REPO,
        timeout=300,
        **kw,
    )


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    # a progress line on every video (not a TTY: one line each, none rewritten in place)
    r = _run(inputs, out, env={**_env(), "TUBELET_PROGRESS_EVERY": "0"})
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r.stdout


def test_local_run_writes_the_contract(reference, inputs):
    out, stdout = reference
    clips = read_parts(out / "clips", S.CLIP_SCHEMA)
    S.validate(clips, upto="split")
    videos = read_parts(out / "videos", S.VIDEO_SCHEMA)
    assert videos.num_rows == 11  # one row per input, bad ones included
    status = dict(zip(videos.column(S.SOURCE_URI).to_pylist(), videos.column(S.STATUS).to_pylist()))
    assert sum(s == S.STATUS_ERROR for s in status.values()) == 5
    ok = clips.filter(clips.column(S.STATUS).to_numpy(zero_copy_only=False) == S.STATUS_OK)
    assert ok.num_rows == 12  # 6 videos x 2 shots
    summary = json.loads((out / "summary" / "split.json").read_text())
    assert summary["videos_error"] == 5 and summary["clips_total_in_output"] == 12
    # the folder's other files are not inputs, and the summary says which were passed over
    assert summary["inputs_skipped"] == 2
    assert sorted(Path(u).name for u in summary["inputs_skipped_examples"]) == ["notes.txt", "poster.jpg"]
    assert "skipped 2 non-video file(s) in --input: " in stdout
    assert "5 error" in stdout
    progress = [ln for ln in stdout.splitlines() if ln.startswith("[split] ")]
    assert [int(ln.split()[1].split("/")[0]) for ln in progress] == list(range(1, 12))
    assert all(ln.split()[1].endswith("/11") and "\r" not in ln for ln in progress)
    assert not list(out.rglob(".*.tmp"))  # no temporary files left behind


def test_rerun_skips_everything(reference, inputs, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    before = {p: p.stat().st_mtime_ns for p in (out / "clips").glob("*.parquet")}
    r = _run(inputs, out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((out / "summary" / "split.json").read_text())["videos_skipped_already_done"] == 11
    assert {p: p.stat().st_mtime_ns for p in (out / "clips").glob("*.parquet")} == before


def test_sigkill_then_resume_gives_the_same_clips(reference, inputs, tmp_path):
    out = tmp_path / "out"
    p = subprocess.Popen(
        [sys.executable, "-m", "jobs.split", "--input", str(inputs), "--output", str(out), "--actors", "1"],
        env=_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 120
    try:
        while time.time() < deadline and len(list((out / "_done" / "split").glob("*"))) < 3:
            time.sleep(0.05)
    finally:
        os.killpg(p.pid, signal.SIGKILL)  # the driver and the Ray processes it started
        p.wait()
    done = len(list((out / "_done" / "split").glob("*")))
    assert 0 < done < 11, "the kill must land mid-run"
    r = _run(inputs, out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _clip_set(out) == _clip_set(reference[0])
    ids = [c[0] for c in _clip_set(out)]
    assert len(ids) == len(set(ids))


def test_ray_job_submit_on_loopback(inputs, tmp_path):
    with ray_head(tmp_path / "head.log") as address:
        out = tmp_path / "out"
        r = submit(address, ["-m", "jobs.split", "--input", str(inputs), "--output", str(out)], timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "succeeded" in r.stdout.lower()
    clips = read_parts(out / "clips", S.CLIP_SCHEMA)
    S.validate(clips, upto="split")
    assert pq.read_table(next((out / "videos").glob("*.parquet"))).num_rows == 1
    assert json.loads((out / "summary" / "split.json").read_text())["videos"] == 11


def test_summary_folds_the_clip_parts(tmp_path, monkeypatch):
    """The summary's clip totals equal those of the concatenated parts, read one part at a time
    and three columns only (no Ray: `summarize` on parts written by hand)."""
    from curate.io import storage
    from jobs import split

    rows = [
        {
            S.CLIP_ID: f"c{i}",
            S.STATUS: S.STATUS_ERROR if i % 5 == 0 else S.STATUS_OK,
            S.START_PTS: 0.5 * i,
            S.END_PTS: 0.5 * i + 0.25 * (1 + i % 3),
        }
        for i in range(23)
    ]
    for j, (a, b) in enumerate(((0, 4), (4, 15), (15, 23))):
        storage.write_parquet_atomic(S.table_from_rows(rows[a:b]), tmp_path / "clips" / f"part-{j}.parquet")
    seen: list[tuple[int, list]] = []
    read_table = split.read_table

    def recorded(uri, columns=None):
        t = read_table(uri, columns)
        seen.append((t.num_rows, columns))
        return t

    monkeypatch.setattr(split, "read_table", recorded)
    videos = [{"status": S.STATUS_OK, "skipped": False, "num_clips": 18, "failed_stage": None, "error": None}]
    summary = split.summarize(videos, str(tmp_path), 1.0)
    ok = [r for r in rows if r[S.STATUS] == S.STATUS_OK]
    assert summary["clips_total_in_output"] == len(ok) == 18
    assert summary["clip_seconds_total"] == pytest.approx(sum(r[S.END_PTS] - r[S.START_PTS] for r in ok))
    assert [n for n, _ in seen] == [4, 11, 8]
    assert all(sorted(c) == sorted([S.STATUS, S.START_PTS, S.END_PTS]) for _, c in seen)


def test_a_source_replaced_by_a_video_split_before_gets_its_row_rewritten(tmp_path):
    """a.mp4 is overwritten with b.mp4's bytes (a video already split under another name): its
    content is done, yet a's row must now name b's clips, not keep the old ones."""
    from curate.io import layout
    from curate.shots.split import SplitConfig
    from jobs.runtime.split_parts import process_one, source_key

    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    two_shot_video(a, seconds=2.5)
    two_shot_video(b, seconds=3.0)
    out, cfg = str(tmp_path / "out"), SplitConfig()
    first, other = process_one(str(a), cfg, out), process_one(str(b), cfg, out)
    assert first["video_id"] != other["video_id"]
    shutil.copy(b, a)
    again = process_one(str(a), cfg, out)
    assert not again["skipped"] and again["video_id"] == other["video_id"]
    row = pq.read_table(layout.part_path(layout.folder(out, layout.VIDEOS), source_key(str(a)))).to_pylist()
    assert [r[S.VIDEO_ID] for r in row] == [other["video_id"]] and row[0][S.SOURCE_URI] == str(a)
    assert process_one(str(a), cfg, out)["skipped"]  # and then it resumes as before
