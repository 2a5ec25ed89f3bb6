"""`python -m jobs.bench transitions`: shot detectors judged on many seeded composites.

    python -m jobs.bench transitions --seeds 100-119 [--detectors content,hybrid] [--videos DIR]

Each seed draws a composite of the real test videos (curate/synthetic/composite.py: shots cut where
their ground truth says, joined by drawn transitions: hard and jump cuts, dissolves, fades,
wipes of every shape, slides, pushes; pans, shakes and flashes inside shots as negatives)
and every detector splits it with the default clip policy. Per detector, over all seeds:
- clips holding a transition frame (target 0) and clips holding frames of two shots;
- coverage: share of shot frames inside some clip (target >= 0.9);
- exact hard-cut starts: share of true hard and jump cuts where a clip starts (>= 0.95);
- wrongly split shots: a predicted cut or excluded range strictly inside a shot (target 0),
  and which negatives (pan, shake, flash) such a split touched;
- per transition type, the share fully excluded (none of its frames in any clip).
Seeds 0-29 were used while tuning the detectors; report on others.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from curate.shots.shot_metrics import judge_labels
from curate.shots.split import SplitConfig, clip_spans
from curate.video.decode import iter_small_yuv

DEFAULT_VIDEOS = Path(__file__).resolve().parents[3] / "shared" / "data" / "videos"
TUNING_SEEDS = range(0, 30)


def parse_seeds(text: str) -> list[int]:
    """`1,2,5-9` -> [1, 2, 5, 6, 7, 8, 9]."""
    out: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def judge_one(comp, tr, cfg: SplitConfig) -> dict:
    """Counts for one composite and one detector's Transitions."""
    spans, _ = clip_spans(tr, cfg)
    clips = [(s.start, s.end) for s in spans]
    score = judge_labels(comp.labels, comp.cuts, clips, tr.cuts, [(a, b) for a, b, _ in tr.excluded])
    in_clip = np.zeros(comp.num_frames, bool)
    for s, e in clips:
        in_clip[s:e] = True
    per_type: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for name, a, b in comp.labelled:
        idx = np.arange(a, b + 1)
        idx = idx[comp.labels[idx] == -1]
        per_type[name][0] += 1
        per_type[name][1] += bool(len(idx)) and not in_clip[idx].any()
    bad_shots = []
    for sid, (first, last) in enumerate(comp.shots()):
        inner = [c for c in tr.cuts if first < c <= last] + [
            a for a, b, _ in tr.excluded if first < a and b < last
        ]
        if inner:
            negs = {k for k, x, y in comp.negatives if any(x - 3 <= f <= y + 3 for f in inner)}
            bad_shots.append((sid, inner, sorted(negs)))
    return {"score": score, "per_type": dict(per_type), "bad_shots": bad_shots, "clips": clips}


def _detectors(names: list[str]):
    from curate.shots.split import make_detector

    out = []
    for n in names:
        det = make_detector(SplitConfig(detector=n))
        if hasattr(det, "load"):
            det.load()
        out.append(det)
    return out


def run(seeds: list[int], detectors: list[str], videos: Path, out: Path, verbose: bool = True) -> dict:
    from curate.synthetic.composite import make_composite

    cfg = SplitConfig()
    dets = _detectors(detectors)
    totals: dict[str, dict] = {
        d.name: {
            "clips": 0,
            "with_tr": 0,
            "mixing": 0,
            "shot_frames": 0,
            "covered": 0,
            "cuts": 0,
            "cut_starts": 0,
            "split": 0,
            "types": defaultdict(lambda: [0, 0]),
            "negatives_split": defaultdict(int),
            "seconds": 0.0,
            "failures": [],
        }
        for d in dets
    }
    negatives: dict[str, int] = defaultdict(int)
    for seed in seeds:
        comp = make_composite(out / f"composite-{seed}.mp4", videos, steps=None, seed=seed, negatives=True)
        for k, _, _ in comp.negatives:
            negatives[k] += 1
        for det in dets:
            t0 = time.perf_counter()
            if det.frame_size is not None:
                frames = (f for _, f in iter_small_yuv(comp.path, size=det.frame_size))
            else:
                frames = (f for _, f in iter_small_yuv(comp.path, target_area=det.target_area))
            tr = det.detect(frames)
            r = judge_one(comp, tr, cfg)
            t = totals[det.name]
            t["seconds"] += time.perf_counter() - t0
            s = r["score"]
            shot = comp.labels >= 0
            t["clips"] += s.clips
            t["with_tr"] += s.clips_with_transition_frames
            t["mixing"] += s.clips_mixing_shots
            t["shot_frames"] += int(shot.sum())
            t["covered"] += round(s.coverage * int(shot.sum()))
            t["cuts"] += len(comp.cuts)
            t["cut_starts"] += round(s.cut_starts * len(comp.cuts))
            t["split"] += s.wrongly_split
            for name, (n, ok) in r["per_type"].items():
                t["types"][name][0] += n
                t["types"][name][1] += ok
            for _, _, negs in r["bad_shots"]:
                for k in negs or ["none"]:
                    t["negatives_split"][k] += 1
            bad_tr = [
                (name, a, b)
                for name, a, b in comp.labelled
                if any(
                    s0 <= b and a < e0 and (comp.labels[max(a, s0) : min(b + 1, e0)] == -1).any()
                    for s0, e0 in r["clips"]
                )
            ]
            missed = [c for c in comp.cuts if c not in {s0 for s0, _ in r["clips"]}]
            if bad_tr or r["bad_shots"] or missed:
                t["failures"].append(
                    {
                        "seed": seed,
                        "in_clips": bad_tr,
                        "split": r["bad_shots"],
                        "cuts_missed": missed,
                        "steps": [st.label() for st in comp.steps],
                    }
                )
            if verbose:
                print(
                    f"seed {seed} {det.name}: {s.clips} clips, "
                    f"{s.clips_with_transition_frames} with transition "
                    f"frames {bad_tr}, coverage {s.coverage:.3f}, cut starts {s.cut_starts:.2f} {missed}, "
                    f"split {r['bad_shots']}",
                    file=sys.stderr,
                    flush=True,
                )
        comp.path.unlink(missing_ok=True)
    return {"seeds": seeds, "negatives": dict(negatives), "detectors": totals}


def format_table(res: dict) -> str:
    dets = res["detectors"]
    lines = [
        f"{len(res['seeds'])} composites, seeds {res['seeds'][0]}-{res['seeds'][-1]}; "
        f"negatives inside shots: {dict(res['negatives'])}",
        "",
        "| detector | clips | clips with transition frames | clips mixing shots | coverage "
        "| exact hard-cut starts | wrongly split shots | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, t in dets.items():
        lines.append(
            f"| {name} | {t['clips']} | {t['with_tr']} | {t['mixing']} "
            f"| {t['covered'] / max(1, t['shot_frames']):.3f} "
            f"| {t['cut_starts']}/{t['cuts']} = {t['cut_starts'] / max(1, t['cuts']):.3f} | {t['split']} "
            f"{dict(t['negatives_split']) or ''} | {t['seconds']:.0f} |"
        )
    types = sorted({k for t in dets.values() for k in t["types"]})
    lines += [
        "",
        "| transition type | count | " + " | ".join(f"{n} fully excluded" for n in dets) + " |",
        "|---|---|" + "---|" * len(dets),
    ]
    for k in types:
        n = next(t["types"][k][0] for t in dets.values() if k in t["types"])
        lines.append(
            f"| {k} | {n} | "
            + " | ".join(f"{t['types'][k][1] / max(1, t['types'][k][0]):.3f}" for t in dets.values())
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jobs.bench transitions",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--seeds", default="100-119", help="e.g. 100-119 or 1,5,9 (0-29 were used for tuning)")
    p.add_argument("--detectors", default="content,hybrid", help="comma-separated split detectors to judge")
    p.add_argument(
        "--videos",
        default=os.environ.get("TUBELET_TEST_VIDEOS", str(DEFAULT_VIDEOS)),
        help="folder of source videos the composites are cut from",
    )
    p.add_argument("--out", default="bench-out", help="scratch folder for the composites")
    p.add_argument("--quiet", action="store_true", help="no line per seed")
    args = p.parse_args(argv)
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError:
        print(
            f"error: --seeds must be numbers and ranges like 100-119,200, got {args.seeds!r}; "
            "pass e.g. --seeds 100-119",
            file=sys.stderr,
        )
        return 2
    videos = Path(args.videos)
    if not (videos / "shot_boundaries.json").is_file():
        print(
            f"error: --videos must hold shot_boundaries.json, got {videos}; pass the test videos' folder",
            file=sys.stderr,
        )
        return 2
    names = [d for d in args.detectors.split(",") if d]
    bad = [d for d in names if d not in ("content", "transnetv2", "hybrid")]
    if bad:
        print(
            f"error: --detectors must be from content,transnetv2,hybrid, got {bad[0]!r}; "
            "pass e.g. content,hybrid",
            file=sys.stderr,
        )
        return 2
    used = sorted(set(seeds) & set(TUNING_SEEDS))
    if used:
        print(f"note: seeds {used} were used while tuning", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        res = run(seeds, names, Path(args.videos), Path(tmp), verbose=not args.quiet)
    table = format_table(res)
    print(table)
    dump = {
        "seeds": seeds,
        "negatives": res["negatives"],
        "detectors": {
            n: {**t, "types": dict(t["types"]), "negatives_split": dict(t["negatives_split"])}
            for n, t in res["detectors"].items()
        },
    }
    (out / "bench_transitions.json").write_text(json.dumps(dump, indent=1, default=str))
    return 0
