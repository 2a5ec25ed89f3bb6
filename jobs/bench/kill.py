"""`python -m jobs.bench kill`: `kill -9` of a whole `jobs.curate` run at N points, each followed by
a rerun, against one uninterrupted run: the captions parts and latent shards must be
byte-identical (sha256 of every file listed). No baseline ratio: the figure is "N of N equal".

The kill points are spread over the run by its progress on disk: the reference run's marker
count M (every file under a `_done/` folder) gives points i * M / (N + 1), so they land in
split, score, caption and encode alike. A kill takes the driver and every Ray process it
started (its process group), as an OOM killer or a lost node would. Smoke preset: the bytes
mean nothing, only their equality does.

    python -m jobs.bench kill --points 6            # ~1.5 min a point on 2 CPUs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMPARED = ("captions", "latents")  # OUT/<folder>/*.parquet: the parts and shards a user trains from


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # each run starts its own local Ray
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", RAY_AUTH_MODE=env.get("RAY_AUTH_MODE", "disabled"))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _curate(inp: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobs.curate",
            "--input",
            str(inp),
            "--output",
            str(out),
            "--preset",
            "smoke",
            "--no-report",
        ],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def markers(out: Path) -> int:
    return sum(1 for p in out.rglob("*") if "_done" in p.parts and p.is_file()) if out.exists() else 0


def digests(out: Path) -> dict[str, str]:
    """sha256 of every compared file, by its path under OUT."""
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in COMPARED
        for p in sorted((out / folder).glob("*.parquet"))
    }


def _finish(p: subprocess.Popen) -> None:
    err = p.communicate()[1]
    if p.returncode != 0:
        raise RuntimeError(f"jobs.curate exited {p.returncode}: {err[-2000:]}")


def kill_at(inp: Path, out: Path, at: int, limit_s: float = 900) -> int:
    """Start a run, kill -9 its process group once `at` markers exist; the count at the kill
    (0 when the run ended first: the point was too late)."""
    p = _curate(inp, out)
    deadline = time.monotonic() + limit_s
    while p.poll() is None and markers(out) < at and time.monotonic() < deadline:
        time.sleep(0.05)
    if p.poll() is not None:
        p.communicate()
        return 0
    os.killpg(p.pid, signal.SIGKILL)
    p.communicate()
    return markers(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m jobs.bench kill",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument(
        "--points", type=int, default=6, help="kill points (one interrupted run and a rerun each)"
    )
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one, removed)")
    ap.add_argument("--json", default=None, help="also write the result here")
    a = ap.parse_args(argv)
    if a.points < 1:
        print(f"error: --points must be >= 1, got {a.points}; pass --points 6", file=sys.stderr)
        return 2
    from jobs.demo import make_samples

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.work or tmp)
        inp = work / "in"
        make_samples(inp, size=(192, 108))
        ref_out = work / "reference"
        t0 = time.perf_counter()
        _finish(_curate(inp, ref_out))
        ref, total = digests(ref_out), markers(ref_out)
        print(f"reference: {len(ref)} files, {total} markers, {time.perf_counter() - t0:.0f} s", flush=True)
        for name, digest in ref.items():
            print(f"  {digest}  {name}")
        rows = []
        for i in range(1, a.points + 1):
            at = max(1, round(i * total / (a.points + 1)))
            out = work / f"killed-{i}"
            seen = kill_at(inp, out, at)
            _finish(_curate(inp, out))  # the rerun resumes
            got = digests(out)
            same = got == ref
            rows.append(
                {
                    "point": i,
                    "kill_at_markers": at,
                    "markers_at_kill": seen,
                    "identical": same,
                    "differing": sorted(k for k in ref.keys() | got.keys() if ref.get(k) != got.get(k)),
                }
            )
            print(
                f"point {i}: killed at {seen}/{total} markers (aimed {at}), rerun: "
                f"{'byte-identical' if same else 'DIFFERENT: ' + ', '.join(rows[-1]['differing'])}",
                flush=True,
            )
        ok = sum(r["identical"] for r in rows)
        print(f"byte-identical after kill -9 + rerun: {ok}/{len(rows)}")
        if a.json:
            Path(a.json).write_text(
                json.dumps({"reference": ref, "markers": total, "points": rows}, indent=1)
            )
    return 0 if ok == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
