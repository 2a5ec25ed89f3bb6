"""`python -m jobs.bench split`: split throughput against the decode floor, accuracy, memory.

For each detector, on the same files in the same run:
- frames/s of `split_video` (probe + hash + decode + detect + clip policy) and its ratio to
  `ffmpeg -i FILE -f null -` (decode only, all threads: the floor);
- frame-exact and +-2 frame F1 of hard cuts, and clips touching a listed gradual
  transition or black segment (ground truth: shot_boundaries.json);
- PySceneDetect's ContentDetector as shipped (`scenedetect.detect`, its own decode), for reference.
Then peak RSS of splitting a generated one-hour 720p video in a child process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import imageio_ffmpeg

from curate import schema as S
from curate.shots.shot_metrics import CutScore, clips_touching, forbidden_frames, match_cuts
from curate.shots.split import SplitConfig, make_detector, split_video_detailed
from jobs.runtime import flags

DEFAULT_VIDEOS = Path(__file__).resolve().parents[3] / "shared" / "data" / "videos"


def ffmpeg_floor(path: Path) -> float:
    t = time.perf_counter()
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-nostdin", "-i", str(path), "-f", "null", "-"],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - t


def bench_detector(detector: str, files: list[Path], gt: dict) -> dict:
    cfg = SplitConfig(detector=detector)
    det = make_detector(cfg)
    if hasattr(det, "load"):
        det.load()
    exact, near = CutScore(0, 0, 0), CutScore(0, 0, 0)
    frames, seconds, touching = 0, 0.0, 0
    for f in files:
        t = time.perf_counter()
        video, rows, tr = split_video_detailed(f, cfg, det)
        seconds += time.perf_counter() - t
        frames += video.get(S.FRAME_COUNT) or 0
        g = gt.get(f.name)
        if g is None:
            continue
        cuts = tr.cuts if tr is not None else []
        exact += match_cuts(cuts, g["cuts"], 0)
        near += match_cuts(cuts, g["cuts"], 2)
        spans = [(r[S.START_FRAME], r[S.END_FRAME]) for r in rows if r[S.STATUS] == S.STATUS_OK]
        touching += len(clips_touching(spans, forbidden_frames(g)))
    return {
        "detector": detector,
        "frames": frames,
        "seconds": seconds,
        "fps": frames / seconds,
        "f1_exact": exact.f1,
        "f1_pm2": near.f1,
        "clips_touching_transitions": touching,
    }


def bench_pyscenedetect(files: list[Path], gt: dict) -> dict:
    from scenedetect import ContentDetector, detect

    exact, near = CutScore(0, 0, 0), CutScore(0, 0, 0)
    frames, seconds = 0, 0.0
    for f in files:
        t = time.perf_counter()
        scenes = detect(str(f), ContentDetector())
        seconds += time.perf_counter() - t
        frames += gt.get(f.name, {}).get("frames", 0)
        cuts = [s[0].get_frames() for s in scenes[1:]]
        if f.name in gt:
            exact += match_cuts(cuts, gt[f.name]["cuts"], 0)
            near += match_cuts(cuts, gt[f.name]["cuts"], 2)
    return {
        "detector": "pyscenedetect ContentDetector (own decode)",
        "frames": frames,
        "seconds": seconds,
        "fps": frames / seconds,
        "f1_exact": exact.f1,
        "f1_pm2": near.f1,
        "clips_touching_transitions": None,
    }


def make_long_video(path: Path, minutes: float) -> Path:
    """A generated 720p H.264 video with a hard cut every 30 s: four grainy lavfi sources (2 min)
    encoded once, then repeated with the concat demuxer (stream copy, so this is quick)."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    ff = imageio_ffmpeg.get_ffmpeg_exe()
    seg = 30
    unit = path.with_name("unit-2min-720p.mp4")
    if not unit.exists():
        sources = ["testsrc2", "smptebars", "rgbtestsrc", "testsrc"]
        args = [ff, "-v", "error", "-nostdin", "-y"]
        for src in sources:
            args += ["-f", "lavfi", "-i", f"{src}=size=1280x720:rate=24:duration={seg}"]
        # temporal grain so that decoding costs about what real footage costs
        chain = ";".join(f"[{i}:v]format=yuv420p,hue=h={90 * i},noise=alls=12:allf=t[s{i}]" for i in range(4))
        chain += ";" + "".join(f"[s{i}]" for i in range(4)) + "concat=n=4:v=1:a=0[v]"
        subprocess.run(
            [
                *args,
                "-filter_complex",
                chain,
                "-map",
                "[v]",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-crf",
                "28",
                "-g",
                "48",
                str(unit),
            ],
            check=True,
        )
    repeats = max(1, round(minutes / 2))
    listing = path.with_suffix(".txt")
    listing.write_text("".join(f"file '{unit.resolve()}'\n" for _ in range(repeats)))
    tmp = path.with_suffix(".tmp.mp4")
    subprocess.run(
        [
            ff,
            "-v",
            "error",
            "-nostdin",
            "-y",
            "-f",
            "concat",
            "-safe",
            "0",
            "-i",
            str(listing),
            "-c",
            "copy",
            str(tmp),
        ],
        check=True,
    )
    os.replace(tmp, path)
    return path


def peak_rss_of_split(path: Path) -> tuple[float, float]:
    """Peak RSS (MB) and wall seconds of split_video on `path` in a fresh child process.

    important: the child reads its own high-water mark, VmHWM in /proc/self/status (kB).
    `ru_maxrss` would not do: Linux carries it over from the parent across fork and exec, so
    after the detectors ran here the child reported this process's peak, not its own.
    """
    code = (
        "import sys, time; from curate.shots.split import split_video, SplitConfig; "
        "t = time.perf_counter(); v, r = split_video(sys.argv[1], SplitConfig(on_error='raise')); "
        "hwm = next(ln for ln in open('/proc/self/status') if ln.startswith('VmHWM:')).split()[1]; "
        "print(time.perf_counter() - t, hwm, v['frame_count'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    ).stdout.split()
    return float(out[1]) / 1024.0, float(out[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jobs.bench split",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "--videos",
        default=os.environ.get("TUBELET_TEST_VIDEOS", str(DEFAULT_VIDEOS)),
        help="folder of input videos",
    )
    p.add_argument(
        "--detectors", default="content,transnetv2,hybrid", help="comma-separated detectors to compare"
    )
    p.add_argument(
        "--long-minutes",
        type=flags.finite_float,
        default=60.0,
        help="length of the generated memory-test video (0: skip)",
    )
    p.add_argument("--out", default="bench-out", help="scratch folder for the benchmark's outputs")
    args = p.parse_args(argv)
    vdir = Path(args.videos)
    gt = {
        k: v
        for k, v in json.loads((vdir / "shot_boundaries.json").read_text()).items()
        if not k.startswith("_")
    }
    files = [vdir / name for name in sorted(gt)]
    floor = sum(ffmpeg_floor(f) for f in files)
    frames_total = sum(g["frames"] for g in gt.values())
    rows = []
    for det in [d for d in args.detectors.split(",") if d]:
        try:
            rows.append(bench_detector(det, files, gt))
        except (ImportError, ModuleNotFoundError) as e:
            print(f"skipping detector {det}: {e}", file=sys.stderr)
    rows.append(bench_pyscenedetect(files, gt))
    floor_fps = frames_total / floor
    print(
        f"\nsplit on {len(files)} real videos, {frames_total} frames; ffmpeg -f null floor: {floor:.2f} s "
        f"({floor_fps:.0f} frames/s)\n"
    )
    print("| detector | frames/s | ratio to decode floor | F1 exact | F1 +-2 | clips touching transitions |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        r["ratio_to_floor"] = r["fps"] / floor_fps
        touch = "-" if r["clips_touching_transitions"] is None else r["clips_touching_transitions"]
        print(
            f"| {r['detector']} | {r['fps']:.0f} | {r['ratio_to_floor']:.2f} | {r['f1_exact']:.3f} | "
            f"{r['f1_pm2']:.3f} | {touch} |"
        )
    result = {"floor_seconds": floor, "floor_fps": floor_fps, "detectors": rows}
    if args.long_minutes > 0:
        long = make_long_video(Path(args.out) / f"long-{args.long_minutes:g}min-720p.mp4", args.long_minutes)
        lfloor = ffmpeg_floor(long)
        rss, secs = peak_rss_of_split(long)
        result["long_video"] = {
            "minutes": args.long_minutes,
            "peak_rss_mb": rss,
            "split_seconds": secs,
            "floor_seconds": lfloor,
            "ratio_to_floor": lfloor / secs,
        }
        print(
            f"\n{args.long_minutes:g}-minute 720p video: split {secs:.1f} s vs ffmpeg floor {lfloor:.1f} s "
            f"(ratio {lfloor / secs:.2f}); peak RSS {rss:.0f} MB"
        )
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "bench_split.json").write_text(json.dumps(result, indent=2))
    return 0
