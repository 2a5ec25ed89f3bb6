"""Shot-boundary detector bench: frames/s per detector on the same files, and accuracy.

    python -m jobs.bench detect --videos DIR [--device cpu|cuda] [--threads 2] [--repeats 3]

Each file is decoded once per frame size a detector asks for (timed: the decode floor); each
detector then runs on the decoded frames (timed). End-to-end frames/s = frames / (decode +
detect), as split runs them one after the other on the same cores. Model loading is not timed.
With ground truth (shot_boundaries.json), rows carry frame-exact and +-2 F1 on hard cuts and
the number of listed gradual/black frames left inside shots.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from curate.shots.detect import Detector
from curate.shots.shot_metrics import CutScore, forbidden_frames, match_cuts
from curate.video.decode import SmallFrame, iter_small_yuv

VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".mov", ".avi"}


def _decode(path: Path, det: Detector) -> tuple[list[SmallFrame], float]:
    t0 = time.perf_counter()
    if det.frame_size is not None:
        frames = [f for _, f in iter_small_yuv(path, size=det.frame_size)]
    else:
        frames = [f for _, f in iter_small_yuv(path, target_area=det.target_area)]
    return frames, time.perf_counter() - t0


def _uncovered_frames(tr, gt: dict) -> int:
    covered = np.zeros(tr.num_frames, bool)
    for a, b, _ in tr.excluded:
        covered[a : b + 1] = True
    return sum(int((~covered[a : b + 1]).sum()) for a, b, _ in forbidden_frames(gt))


def default_detectors(device: str = "auto") -> list[Detector]:
    from curate.shots.hybrid import DEFAULT as HYBRID
    from curate.shots.hybrid import HybridConfig, HybridDetector
    from curate.shots.transnet import DEFAULT as TRANSNET
    from curate.shots.transnet import TransNetDetector

    tn = TRANSNET.__class__(**{**TRANSNET.__dict__, "device": device})
    hy = HybridConfig(**{**HYBRID.__dict__, "transnet": tn})
    return [TransNetDetector(tn), HybridDetector(hy)]


def bench_detectors(
    paths: Sequence[str | Path],
    detectors: Sequence[Detector] | None = None,
    ground_truth: dict | None = None,
    repeats: int = 1,
) -> list[dict]:
    """One row per detector (plus a `decode` floor row per frame size) with speed and accuracy.

    `ground_truth`: file name -> entry of shot_boundaries.json; files without an entry are
    timed but not scored. With `repeats` > 1 every time is the best of that many runs, and the
    detectors take turns file by file, so that load from other processes hits them alike.
    """
    paths = [Path(p) for p in paths]
    detectors = list(detectors) if detectors is not None else default_detectors()
    keys = [(d.frame_size, d.target_area if d.frame_size is None else None) for d in detectors]
    decoded: dict[tuple, dict[Path, list[SmallFrame]]] = {}
    decode_s: dict[tuple, dict[Path, float]] = {}
    for key, det in zip(keys, detectors):
        if key in decoded:
            continue
        decoded[key], decode_s[key] = {}, {}
        for p in paths:
            runs = [_decode(p, det) for _ in range(repeats)]
            decoded[key][p], decode_s[key][p] = runs[0][0], min(t for _, t in runs)
    for det in detectors:
        load = getattr(det, "load", None)
        if load is not None:
            load()  # once per process, as once per Ray actor; not timed
    detect_s = [dict.fromkeys(paths, float("inf")) for _ in detectors]
    windows = [0] * len(detectors)
    scores = [[CutScore(0, 0, 0), CutScore(0, 0, 0), 0] for _ in detectors]
    for rep in range(repeats):
        for p in paths:
            for i, (key, det) in enumerate(zip(keys, detectors)):
                scorer = getattr(det, "scorer", None)
                w0 = getattr(scorer, "windows_run", 0)
                t0 = time.perf_counter()
                tr = det.detect(iter(decoded[key][p]))
                detect_s[i][p] = min(detect_s[i][p], time.perf_counter() - t0)
                gt = (ground_truth or {}).get(p.name)
                if rep == 0:
                    windows[i] += getattr(scorer, "windows_run", 0) - w0
                    if gt is not None:
                        scores[i][0] += match_cuts(tr.cuts, gt["cuts"])
                        scores[i][1] += match_cuts(tr.cuts, gt["cuts"], tolerance=2)
                        scores[i][2] += _uncovered_frames(tr, gt)
    rows: list[dict] = []
    for key in decoded:
        n, t = sum(len(v) for v in decoded[key].values()), sum(decode_s[key].values())
        size = key[0] or key[1]
        rows.append({"detector": f"decode {size}", "frames": n, "seconds": t, "fps": n / max(t, 1e-9)})
    for i, (key, det) in enumerate(zip(keys, detectors)):
        n = sum(len(v) for v in decoded[key].values())
        dec, det_t = sum(decode_s[key].values()), sum(detect_s[i].values())
        row = {
            "detector": det.name,
            "frames": n,
            "seconds": dec + det_t,
            "fps": n / max(dec + det_t, 1e-9),
            "detect_fps": n / max(det_t, 1e-9),
            "x_decode_floor": (dec + det_t) / max(dec, 1e-9),
        }
        scorer = getattr(det, "scorer", None)
        if scorer is not None and getattr(scorer, "model", None) is not None:
            row["model_windows"] = windows[i]
            row["device"] = str(next(scorer.model.parameters()).device)
        if ground_truth:
            exact, near, uncovered = scores[i]
            row |= {
                "f1_exact": exact.f1,
                "f1_pm2": near.f1,
                "cut_tp_fp_fn": (exact.tp, exact.fp, exact.fn),
                "excluded_frames_in_shots": uncovered,
            }
        rows.append(row)
    return rows


def format_rows(rows: list[dict]) -> str:
    base = next((r["fps"] for r in rows if r["detector"] == "transnetv2"), None)
    lines = [
        f"{'detector':<16}{'frames':>7}{'fps':>9}{'detect fps':>11}{'x decode':>9}{'x tnv2':>8}"
        f"{'windows':>8}{'F1 exact':>9}{'F1 +-2':>8}{'in shots':>9}"
    ]
    for r in rows:

        def val(k: str, fmt: str, row: dict = r) -> str:
            return format(row[k], fmt) if k in row else "-"

        speedup = format(r["fps"] / base, ".2f") if base and "x_decode_floor" in r else "-"
        lines.append(
            f"{r['detector']:<16}{r['frames']:>7}{val('fps', '.1f'):>9}{val('detect_fps', '.1f'):>11}"
            f"{val('x_decode_floor', '.2f'):>9}{speedup:>8}{val('model_windows', 'd'):>8}"
            f"{val('f1_exact', '.3f'):>9}{val('f1_pm2', '.3f'):>8}{val('excluded_frames_in_shots', 'd'):>9}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m jobs.bench detect",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=__doc__.splitlines()[0],
    )
    ap.add_argument(
        "--videos",
        type=Path,
        default=Path(__file__).resolve().parents[3] / "shared" / "data" / "videos",
        help="folder of input videos",
    )
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=1, help="best of this many runs per file (noisy machines)")
    args = ap.parse_args(argv)
    if not args.videos.is_dir():
        print(
            f"error: --videos must be a folder of videos; got {args.videos} (not a folder). "
            "Pass the folder holding the test videos.",
            file=sys.stderr,
        )
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    paths = sorted(p for p in args.videos.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    gt_file = args.videos / "shot_boundaries.json"
    gt = json.loads(gt_file.read_text()) if gt_file.is_file() else None
    if args.repeats < 1:
        print(f"error: --repeats must be >= 1; got {args.repeats}. Pass 1 or more.", file=sys.stderr)
        return 2
    rows = bench_detectors(paths, default_detectors(args.device), gt, repeats=args.repeats)
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
