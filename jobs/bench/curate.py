"""`python -m jobs.bench curate`: the streaming plan against the stage-by-stage jobs and the floor.

On the demo input (generated samples, optionally plus real videos), in one run:
- `jobs.curate` (one Ray Data streaming plan, smoke preset),
- the stage-by-stage jobs one after the other (split, score, caption, encode), as a user
  would chain them, each with its own Ray start,
- `ffmpeg -i FILE -f null -` over the same files (the decode floor).
Each runs as a fresh process, so every path pays its own start-up. Reported as ratios.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from jobs.bench.split import DEFAULT_VIDEOS, ffmpeg_floor
from jobs.demo import make_samples

REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str]) -> float:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jobs.bench curate",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--out", default="bench-out/curate", help="scratch folder for the benchmark's outputs")
    p.add_argument(
        "--real",
        default="friends-video-clip.mp4,poppins.mp4",
        help="real videos from --videos to add to the generated samples ('' for none)",
    )
    p.add_argument("--videos", default=str(DEFAULT_VIDEOS), help="folder of input videos")
    a = p.parse_args(argv)
    root = Path(a.out)
    shutil.rmtree(root, ignore_errors=True)
    inputs = root / "input"
    files = make_samples(inputs)
    for name in [n for n in a.real.split(",") if n]:
        shutil.copy(Path(a.videos) / name, inputs / name)
        files.append(inputs / name)
    floor = sum(ffmpeg_floor(f) for f in files)

    stream_out = root / "stream"
    stream = _run(
        [
            "jobs.curate",
            "--input",
            str(inputs),
            "--output",
            str(stream_out),
            "--preset",
            "smoke",
            "--no-report",
        ]
    )
    s = root / "stages"
    stages = {
        "split": ["jobs.split", "--input", str(inputs), "--output", str(s)],
        "score": [
            "jobs.score",
            "--input",
            str(s / "clips"),
            "--output",
            str(s / "scored"),
            "--preset",
            "smoke",
            "--cpus",
            "0.5",
        ],
        "caption": [
            "jobs.caption",
            "--input",
            str(s / "scored"),
            "--output",
            str(s / "captions"),
            "--preset",
            "smoke",
        ],
        "encode": [
            "jobs.encode",
            "--input",
            str(s / "captions"),
            "--output",
            str(s / "latents"),
            "--preset",
            "smoke",
        ],
    }
    per_stage = {name: _run(args) for name, args in stages.items()}
    staged = sum(per_stage.values())
    summary = json.loads((stream_out / "summary" / "curate.json").read_text())
    result = {
        "videos": len(files),
        "clips": summary["clips"],
        "encoded": summary["encoded"],
        "streaming_seconds": stream,
        "stage_by_stage_seconds": staged,
        "per_stage_seconds": per_stage,
        "floor_seconds": floor,
        "stage_by_stage_over_streaming": staged / stream,
        "floor_over_streaming": floor / stream,
    }
    print(
        f"\ncurate on {len(files)} videos ({summary['clips']} clips, {summary['encoded']} encoded), "
        "smoke preset"
    )
    print("| path | wall s | ratio |")
    print("|---|---|---|")
    print(f"| jobs.curate (one streaming plan) | {stream:.1f} | 1.00 |")
    print(
        f"| stage-by-stage jobs ({' + '.join(f'{k} {v:.1f}' for k, v in per_stage.items())}) "
        f"| {staged:.1f} | "
        f"{staged / stream:.2f} x streaming |"
    )
    print(f"| ffmpeg -f null decode floor | {floor:.2f} | {floor / stream:.3f} of streaming |")
    (root / "bench_curate.json").write_text(json.dumps(result, indent=2))
    return 0
