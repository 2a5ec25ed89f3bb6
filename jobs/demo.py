"""`make demo` / `python -m jobs.demo --output demo-out`: the whole flow on generated sample videos.

Generates a few small videos with hard cuts, fades, a dissolve, black and motion (nothing is
downloaded), then runs the curation job on a local Ray instance with the `smoke` preset and
prints where everything landed. The smoke preset's models are random: its scores and
captions are meaningless, and every output says so.
"""

from __future__ import annotations

import sys
from pathlib import Path

from curate.synthetic.synth import Segment, make_video

SAMPLES: dict[str, list[Segment]] = {
    "cuts_and_fades.mp4": [
        Segment("shot", 72, 0),
        Segment("shot", 60, 1),
        Segment("fade_out", 18),
        Segment("black", 12),
        Segment("fade_in", 18),
        Segment("shot", 84, 2),
    ],
    "dissolve.mp4": [
        Segment("shot", 72, 3, speed=0.1),
        Segment("dissolve", 24),
        Segment("shot", 72, 0, speed=0.1),
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
    from jobs.runtime import flags

    p = flags.JobParser("python -m jobs.demo", __doc__.split("\n\n")[0])
    p.add_argument("--output", default="demo-out", help="where the samples and every output go")
    p.add_argument("--train-steps", type=int, default=20, help="DiT training steps of the demo run")
    flags.add_verbose(p)
    args = p.parse_args(argv)
    if args.train_steps < 1:
        p.error(f"--train-steps must be >= 1, got {args.train_steps}; e.g. --train-steps 20")
    out = Path(flags.canonical(args.output))
    inputs = make_samples(out / "input")
    print(f"demo: generated {len(inputs)} sample videos in {out / 'input'}")

    from dataclasses import replace

    from jobs import curate, sample, train
    from jobs.runtime.presets import RANDOM_MODELS_WARNING, SMOKE

    run = out / "run"
    summary = curate.main(
        curate.CurateConfig(input=str(out / "input"), output=str(run), preset="smoke", verbose=args.verbose)
    )
    print(
        f"demo: curated {summary['videos']} videos -> {summary['clips']} clips, {summary['kept']} kept, "
        f"{summary['encoded']} encoded into {summary['shards']} shard(s), "
        f"round-trip PSNR {summary['roundtrip_psnr_mean']} dB"
    )
    train_dir = out / "dit"
    train.main(
        replace(SMOKE.train, steps=args.train_steps), str(run / "latents"), train_dir, workers=1, gpu=False
    )
    mp4 = out / "sample.mp4"
    sample.main(
        sample.SampleJob(run=str(train_dir), prompt="a red ball rolls across a wooden table", out=str(mp4))
    )
    print()
    print(RANDOM_MODELS_WARNING)
    print(f"demo: report   -> {summary['report']}")
    print(f"demo: shards   -> {run / 'latents'}  (pandas.read_parquet('{run / 'latents'}'))")
    print(f"demo: DiT run  -> {train_dir}  (loss.csv, loss.png, checkpoints/)")
    print(f"demo: sample   -> {mp4}")
    return 0


if __name__ == "__main__":
    from jobs.runtime.flags import run_cli

    sys.exit(run_cli(main))  # Ctrl-C: one line, exit 130
