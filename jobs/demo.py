"""`make demo` / `python -m jobs.demo --output demo-out`: the whole flow on generated sample videos.

Generates a few small videos with hard cuts, fades, a dissolve, black and motion (nothing is
downloaded), then runs the curation job on a local Ray instance with the `smoke` preset and
prints where everything landed. The smoke preset's models are random: its scores and
captions are meaningless, and every output says so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from curate.synth import Segment, make_video

SAMPLES: dict[str, list[Segment]] = {
    "cuts_and_fades.mp4": [
        Segment("shot", 72, 0), Segment("shot", 60, 1), Segment("fade_out", 18), Segment("black", 12),
        Segment("fade_in", 18), Segment("shot", 84, 2),
    ],
    "dissolve.mp4": [
        Segment("shot", 72, 3, speed=0.1), Segment("dissolve", 24), Segment("shot", 72, 0, speed=0.1),
        Segment("shot", 60, 2),
    ],
    "long_shot.mp4": [Segment("shot", 200, 1)],
    "static_and_fast.mp4": [Segment("shot", 60, 2, speed=0.0), Segment("shot", 72, 3, speed=3.0)],
}


def make_samples(directory: Path, size: tuple[int, int] = (320, 180), fps: int = 24) -> list[Path]:
    """Write the sample videos (once) and return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, segments in SAMPLES.items():
        path = directory / name
        if not path.exists():
            make_video(path, segments, fps=fps, width=size[0], height=size[1])
        out.append(path)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default="demo-out")
    args = p.parse_args(argv)
    out = Path(args.output)
    inputs = make_samples(out / "input")
    print(f"demo: generated {len(inputs)} sample videos in {out / 'input'}")
    from jobs.split import SplitJobConfig, print_summary
    from jobs.split import main as split_main

    summary = split_main(SplitJobConfig(input=str(out / "input"), output=str(out / "run")))
    print_summary(summary)
    print(f"demo: clips -> {out / 'run' / 'clips'}  (pandas.read_parquet('{out / 'run' / 'clips'}'))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
