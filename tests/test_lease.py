"""One run per output (jobs/runtime/lease.py): a held OUT/_lease.json stops a second run with
exit 2 and one line naming the holder; a stale lease (old heartbeat, or a dead process on this
host) is taken over; the lease goes on a normal exit, an error and Ctrl-C; on S3 the claim is a
conditional PUT. No Ray: the claim comes before Ray starts."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from curate.errors import UsageError
from curate.io import storage
from jobs.runtime import lease

REPO = Path(__file__).resolve().parent.parent


def _write(folder: Path, **changes) -> lease.Holder:
    """A lease file written as another run would have written it."""
    h = replace(lease.new_holder("jobs.curate"), **changes)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / lease.LEASE_FILE).write_text(json.dumps(asdict(h)))
    return h


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_held_lease_stops_a_second_claim_naming_the_holder(tmp_path):
    first = lease.claim(str(tmp_path), "jobs.split")
    try:
        with pytest.raises(UsageError) as e:
            lease.claim(str(tmp_path), "jobs.curate")
        msg = str(e.value)
        assert f"host {socket.gethostname()} pid {os.getpid()} since {first.holder.started}" in msg, msg
        assert "jobs.split" in msg and "pass another --output" in msg and str(tmp_path / "_lease.json") in msg
        assert (
            json.loads((tmp_path / "_lease.json").read_text())["run_id"] == first.holder.run_id
        )  # untouched
    finally:
        first.release()
    assert not (tmp_path / "_lease.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary left either


def test_an_old_heartbeat_is_taken_over(tmp_path, capsys):
    old = _write(tmp_path, host="another-node", pid=1, heartbeat_unix=time.time() - 10 * lease.STALE_S)
    got = lease.claim(str(tmp_path), "jobs.curate")
    try:
        assert (
            f"taking over {tmp_path / '_lease.json'} from jobs.curate on host another-node"
            in capsys.readouterr().err
        )
        now = json.loads((tmp_path / "_lease.json").read_text())
        assert now["run_id"] == got.holder.run_id != old.run_id and now["pid"] == os.getpid()
    finally:
        got.release()


def test_a_fresh_lease_of_another_node_holds(tmp_path):
    _write(tmp_path, host="another-node", pid=1)
    with pytest.raises(UsageError, match="host another-node pid 1"):
        lease.claim(str(tmp_path), "jobs.split")


def test_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path, capsys):
    _write(tmp_path, pid=_dead_pid())  # fresh heartbeat: only the process says it is gone
    with lease.hold(str(tmp_path), "jobs.split") as got:
        assert "no longer runs on this host" in capsys.readouterr().err
        assert json.loads((tmp_path / "_lease.json").read_text())["run_id"] == got.holder.run_id


def test_a_killed_unreaped_process_is_gone(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while lease._process_started(p.pid) and time.monotonic() < deadline:  # a zombie until wait()
            time.sleep(0.05)
        assert "no longer runs" in lease.why_stale(_write(tmp_path, pid=p.pid))
    finally:
        p.wait()


def test_a_reused_pid_is_not_the_holder(tmp_path):
    h = _write(tmp_path, pid=os.getpid())
    assert lease.why_stale(h) is None
    assert "no longer runs" in lease.why_stale(replace(h, pid_started=h.pid_started - 3600))


def test_hold_releases_on_an_error_and_on_ctrl_c(tmp_path):
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)), lease.hold(str(tmp_path), "jobs.score"):
            assert (tmp_path / "_lease.json").exists()
            raise exc
        assert not (tmp_path / "_lease.json").exists()


def test_release_never_removes_another_runs_lease(tmp_path):
    mine = lease.claim(str(tmp_path), "jobs.split")
    other = _write(tmp_path, host="another-node")  # taken over while this run was stalled
    mine.release()
    assert json.loads((tmp_path / "_lease.json").read_text())["run_id"] == other.run_id


def test_a_stage_job_refuses_an_output_whose_run_root_is_held(tmp_path):
    with lease.hold(str(tmp_path), "jobs.curate"):
        with pytest.raises(UsageError, match=re.escape("held by jobs.curate")):
            lease.claim(str(tmp_path / "scored"), "jobs.score", watch=[str(tmp_path)])
        assert not (tmp_path / "scored").exists()
    with (
        lease.hold(str(tmp_path / "latents"), "jobs.encode"),
        pytest.raises(UsageError, match=re.escape("jobs.encode")),
    ):
        lease.claim(str(tmp_path), "jobs.curate", watch=lease.stage_folders(str(tmp_path)))


def test_the_heartbeat_refreshes_the_lease(tmp_path, monkeypatch):
    monkeypatch.setenv(lease.STALE_ENV, "0.4")  # a beat every 0.1 s
    with lease.hold(str(tmp_path), "jobs.split") as got:
        first = got.holder.heartbeat_unix
        deadline = time.monotonic() + 10
        while lease.read_holder(str(tmp_path)).heartbeat_unix == first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lease.read_holder(str(tmp_path)).heartbeat_unix > first


def test_on_s3_the_claim_is_a_conditional_put(s3):
    out = f"{s3.make_bucket('tubelet-lease')}/out"
    with lease.hold(out, "jobs.curate") as got:
        assert lease.read_holder(out).run_id == got.holder.run_id
        with pytest.raises(
            UsageError, match=re.escape(f"held by jobs.curate on host {socket.gethostname()}")
        ):
            lease.claim(out, "jobs.split")
        # the PUT itself refuses an existing object (If-None-Match: *), not only the check before it
        assert not lease._create(lease.lease_path(out), b"{}")
    assert not storage.exists(lease.lease_path(out))


def test_a_second_job_on_a_held_output_exits_2_and_writes_nothing(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.mp4").write_bytes(b"not read: the job stops before any input is opened")
    out = tmp_path / "out"
    with lease.hold(str(out), "jobs.curate"):
        r = subprocess.run(
            [sys.executable, "-m", "jobs.split", "--input", str(tmp_path / "in"), "--output", str(out)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert sorted(p.name for p in out.iterdir()) == ["_lease.json"]
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith(
        "error: --output must not be in use by another run, got "
    ), r.stderr
    assert f"held by jobs.curate on host {socket.gethostname()} pid {os.getpid()} since " in lines[0]
    assert "wait for it to finish" in lines[0] and "Traceback" not in r.stderr


def _split(inp: Path, out: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.split", "--input", str(inp), "--output", str(out)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _tree(out: Path) -> dict[str, bytes]:
    """Every data file of a split output (parts and markers; not the summaries' timings)."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*.parquet"))
        if "summary" not in p.parts
    }


@pytest.mark.ray
@pytest.mark.slow
def test_two_real_runs_on_one_output_the_second_exits_2_and_the_first_completes(tmp_path):
    from tests.media import two_shot_video

    inp = tmp_path / "in"
    inp.mkdir()
    two_shot_video(inp / "a.mp4", seconds=2.5)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # each run starts its own local Ray
    first = _split(inp, tmp_path / "out", env)
    deadline = time.monotonic() + 120
    while (
        not (tmp_path / "out" / lease.LEASE_FILE).exists()
        and first.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert first.poll() is None, "the first run ended before the second could start"
    second = _split(inp, tmp_path / "out", env)
    err = second.communicate(timeout=120)[1]
    assert second.returncode == 2 and "must not be in use by another run" in err, err
    err1 = first.communicate(timeout=300)[1]
    assert first.returncode == 0, err1[-3000:]
    assert not (tmp_path / "out" / lease.LEASE_FILE).exists()  # released at the end
    # the first run's output is whole: the same files and bytes as a run that had the output alone
    solo = _split(inp, tmp_path / "solo", env)
    err_solo = solo.communicate(timeout=300)[1]
    assert solo.returncode == 0, err_solo[-3000:]
    got, want = _tree(tmp_path / "out"), _tree(tmp_path / "solo")
    assert got and got.keys() == want.keys() and got == want


def test_a_held_output_loses_the_temporaries_a_killed_run_left(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "clips").mkdir(parents=True)
    left = out / "clips" / storage.temp_name("part-a.parquet")  # a write cut by kill -9
    left.write_bytes(b"half a part")
    keep = [out / "clips" / "part-b.parquet", out / ".notes", out / "clips" / ".part-c.parquet.tmp"]
    other = tmp_path / "elsewhere" / storage.temp_name("part-d.parquet")  # not this run's folder
    other.parent.mkdir()
    for p in [*keep, other]:
        p.write_bytes(b"x")
    with lease.hold(str(out), "jobs.split"):
        assert not left.exists()
        assert all(p.exists() for p in [*keep, other])
    assert "removed 1 temporary file(s) a killed run left in" in capsys.readouterr().err
