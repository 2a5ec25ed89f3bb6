"""Test composites of real footage joined by known transitions, with exact per-frame ground truth.

Shots are cut from real videos at frames that their ground truth (`shot_boundaries.json`,
see tests/conftest.py) marks as inside one shot, decoded with PyAV at a small size, and joined
the way an editor's timeline does: during a gradual transition the outgoing shot keeps playing
under the incoming one. Transitions: hard cuts, jump cuts (same source, frames skipped),
dissolves, fades through black, wipes (linear in 8 directions, soft-edged, iris), slides
(the new shot slides in over the old one) and pushes (it pushes the old one out); plus
1-2 frame white flashes inside shots, which are not shot changes. Deterministic for a seed.

Ground truth per output frame: `labels[i]` = shot id (>= 0) or -1 for a transition frame.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from curate.synth import write_video

SIZE = (320, 180)  # (w, h) of the composite
FPS = 25
# wipe shapes: direction the boundary moves (unit vector in (x, y)), or "iris_out"/"iris_in"
WIPE_SHAPES = ("right", "left", "down", "up", "down_right", "up_left", "iris_out", "iris_in")
SLIDE_DIRS = ("right", "left", "down", "up")  # the way the incoming shot moves
JUMP_CHANGE = 20.0  # mean |RGB difference| across a jump cut, at least (0-255)


@dataclass(frozen=True)
class Step:
    """One transition from the previous shot into the next: kind and length in frames."""

    kind: str  # cut | jump | dissolve | fade | wipe | slide | push
    frames: int = 0  # frames of the transition (fade: each of fade-out, black, fade-in)
    shape: str = ""  # wipe shape or slide/push direction
    soft: float = 0.0  # wipe edge softness, share of the frame


@dataclass
class Composite:
    path: Path
    fps: int
    labels: np.ndarray  # (N,) int: shot id, or -1 inside a transition
    cuts: list[int] = field(default_factory=list)  # first frame of each shot after a hard/jump cut
    transitions: list[tuple[str, int, int]] = field(default_factory=list)  # (kind, first, last) inclusive
    flashes: list[tuple[int, int]] = field(default_factory=list)  # inclusive; part of their shot
    sources: list[tuple[str, int, int]] = field(default_factory=list)  # (file, first, end) per shot

    @property
    def num_frames(self) -> int:
        return len(self.labels)

    def shots(self) -> list[tuple[int, int]]:
        """Inclusive [first, last] frames of each shot id."""
        ids = self.labels
        return [(int(np.flatnonzero(ids == s)[0]), int(np.flatnonzero(ids == s)[-1])) for s in range(ids.max() + 1)]


# A default programme: every transition the detectors must handle, with flashes inside shots.
DEFAULT_STEPS: tuple[Step, ...] = (
    Step("cut"), Step("wipe", 12, "right"), Step("dissolve", 12), Step("wipe", 6, "down"),
    Step("jump"), Step("slide", 12, "left"), Step("wipe", 24, "left"), Step("cut"),
    Step("fade", 10), Step("wipe", 16, "up"), Step("push", 16, "right"), Step("dissolve", 24),
    Step("wipe", 10, "down_right", 0.1), Step("wipe", 18, "iris_out"), Step("cut"), Step("dissolve", 6),
    Step("push", 8, "up"), Step("wipe", 14, "up_left"), Step("slide", 20, "down"), Step("jump"),
    Step("wipe", 12, "iris_in"), Step("cut"), Step("wipe", 8, "left", 0.05), Step("slide", 10, "up"),
)


def source_shots(gt: dict, min_frames: int) -> list[tuple[str, int, int]]:
    """(file, first, end) of every stretch of a real video that its ground truth marks as one shot."""
    out = []
    for name, g in sorted(gt.items()):
        if name.startswith("_"):
            continue
        n = g["frames"]
        bad = np.zeros(n, bool)
        for r in g.get("gradual", []):
            bad[r["range"][0] : r["range"][1] + 1] = True
        for a, b in g.get("black_frames", []):
            bad[a : b + 1] = True
        for o in g.get("overlays_not_shot_changes", []):  # titles fading in and out: kept out
            bad[o["approx_range"][0] : o["approx_range"][1] + 1] = True
        for c in g["cuts"]:
            bad[c] = True  # splits the run; frame c starts the next shot below
        start = None
        for i in range(n + 1):
            edge = i == n or bad[i]
            if start is not None and edge:
                if i - start >= min_frames:
                    out.append((name, start, i))
                start = None
            if i < n and start is None and (not bad[i] or i in g["cuts"]):
                start = i
    return out


def same_scene(gt: dict) -> dict[str, str]:
    """file -> the file whose footage it shows: itself, or the file its ground-truth notes name
    (e.g. a re-encoded copy of another file)."""
    names = [k for k in gt if not k.startswith("_")]
    return {k: next((o for o in names if o != k and o in str(gt[k].get("notes", ""))), k) for k in names}


def _decode_plan(videos: Path, wanted: list[tuple[str, int, int]]) -> dict[tuple[str, int], np.ndarray]:
    """(file, first, count) -> (count, h, w, 3) uint8 RGB frames at SIZE; each file decoded once."""
    out: dict[tuple[str, int], np.ndarray] = {}
    for name in sorted({w[0] for w in wanted}):
        spans = [(s, k) for n, s, k in wanted if n == name]
        last = max(s + k for s, k in spans)
        keep: dict[int, np.ndarray] = {}
        with av.open(str(videos / name)) as c:
            c.streams.video[0].thread_type = "AUTO"
            for i, fr in enumerate(c.decode(video=0)):
                if i >= last:
                    break
                if any(s <= i < s + k for s, k in spans):
                    keep[i] = fr.to_ndarray(format="rgb24", width=SIZE[0], height=SIZE[1])
        for s, k in spans:
            out[(name, s)] = np.stack([keep[i] for i in range(s, s + k) if i in keep])
    return out


def _jump_change(videos: Path, name: str, last: int, first: int) -> float:
    """Mean |RGB difference| between frame `last` and frame `first` of a file, at SIZE."""
    got = _decode_plan(videos, [(name, last, 1), (name, first, 1)])
    return float(np.abs(got[(name, last)][0].astype(np.int16) - got[(name, first)][0]).mean())


def _field(shape: str, h: int, w: int) -> np.ndarray:
    """(h, w) in [0, 1]: when a pixel turns to the new shot, as a share of the wipe."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    x, y = (xx + 0.5) / w, (yy + 0.5) / h
    if shape.startswith("iris"):
        r = np.hypot(x - 0.5, (y - 0.5) * h / w)
        r = r / r.max()
        return r if shape == "iris_out" else 1.0 - r
    f = {"right": x, "left": 1 - x, "down": y, "up": 1 - y, "down_right": (x + y) / 2, "up_left": 1 - (x + y) / 2}[shape]
    return (f - f.min()) / (f.max() - f.min())


def _wipe(a: np.ndarray, b: np.ndarray, p: float, shape: str, soft: float) -> np.ndarray:
    f = _field(shape, *a.shape[:2])
    if soft > 0:  # a soft edge: a ramp of width `soft` (share of the field) sweeping with the wipe
        m = np.clip((p * (1 + soft) - f) / soft, 0.0, 1.0)[..., None]
    else:
        m = (f < p).astype(np.float32)[..., None]
    return (a * (1 - m) + b * m).astype(np.uint8)


def _orient(img: np.ndarray, d: str) -> np.ndarray:
    """Turn `img` so that direction `d` becomes "right" (and back with `_unorient`)."""
    return {"right": img, "left": img[:, ::-1], "down": img.transpose(1, 0, 2), "up": img[::-1].transpose(1, 0, 2)}[d]


def _unorient(img: np.ndarray, d: str) -> np.ndarray:
    return {"right": img, "left": img[:, ::-1], "down": img.transpose(1, 0, 2), "up": img.transpose(1, 0, 2)[::-1]}[d]


def _slide(a: np.ndarray, b: np.ndarray, p: float, d: str, push: bool) -> np.ndarray:
    """The new shot b enters moving in direction d and covers a share p of the frame; with
    `push` the old shot a moves with it, otherwise a stays put under it."""
    a2, b2 = _orient(a, d), _orient(b, d)
    w = a2.shape[1]
    s = round(p * w)
    out = a2.copy()
    if push:
        out[:, s:] = a2[:, : w - s]
    out[:, :s] = b2[:, w - s :]
    return np.ascontiguousarray(_unorient(out, d))


def _mix(kind: str, a: np.ndarray, b: np.ndarray, p: float, st: Step) -> np.ndarray:
    if kind == "dissolve":
        return (a * (1 - p) + b * p).astype(np.uint8)
    if kind == "wipe":
        return _wipe(a, b, p, st.shape, st.soft)
    return _slide(a, b, p, st.shape, push=kind == "push")


def make_composite(
    path: str | Path,
    videos: Path,
    steps: tuple[Step, ...] = DEFAULT_STEPS,
    seed: int = 0,
    shot_frames: tuple[int, int] = (70, 100),
    flashes: int = 4,
) -> Composite:
    """Write a composite of shots from `videos` (with shot_boundaries.json) joined by `steps`.

    Shot lengths are drawn from `shot_frames` (the clip policy's 2 s minimum at 25 fps is
    50 frames); `flashes` white flashes of 1-2 frames are put in the middle of shots.
    """
    rng = np.random.default_rng(seed)
    gt = json.loads((videos / "shot_boundaries.json").read_text())
    longest = max(s.frames for s in steps)
    pool = source_shots(gt, shot_frames[0] + 2 * longest)
    scene = same_scene(gt)
    order = [pool[i] for i in rng.permutation(len(pool))]
    comp = Composite(Path(path), FPS, np.zeros(0, np.int64))
    flash_shots = set(rng.choice(len(steps) + 1, size=min(flashes, len(steps) + 1), replace=False).tolist())
    gradual = ("dissolve", "wipe", "slide", "push")
    # plan: (file, first frame, frames, head, tail) per shot; head/tail play under the transitions
    plan: list[tuple[str, int, int, int, int]] = []
    src_i = 0
    all_steps = (Step("cut"), *steps, Step("cut"))
    lengths = rng.integers(shot_frames[0], shot_frames[1] + 1, size=len(steps) + 1)
    for i in range(len(steps) + 1):  # the two shots of a jump cut share one source: keep them short
        if "jump" in (all_steps[i].kind, all_steps[i + 1].kind):
            lengths[i] = shot_frames[0]
    needs = [int(n) + sum(s.frames for s in all_steps[i : i + 2] if s.kind in gradual) for i, n in enumerate(lengths)]
    for shot in range(len(steps) + 1):
        st, nxt = all_steps[shot], all_steps[shot + 1]
        head = st.frames if st.kind in gradual else 0
        tail = nxt.frames if nxt.kind in gradual else 0
        need = needs[shot]
        if st.kind == "jump":
            # same source, 1 s further on: the view jumps, as in an edited interview
            name, start = plan[-1][0], plan[-1][1] + plan[-1][2] + FPS
        else:
            # a shot before a jump cut needs room for the next shot in its source, and the view
            # must change across the jump (on a locked-off camera or a still scene it does not)
            room = need + (FPS + needs[shot + 1] if nxt.kind == "jump" else 0)
            for _ in range(len(order)):
                name, first, end = order[src_i % len(order)]
                src_i += 1
                if end - first < room or (plan and scene[name] == scene[plan[-1][0]]):
                    continue  # too short, or the same scene as the shot before (no visible change)
                starts = first + rng.integers(0, end - first - room + 1, size=1 if nxt.kind != "jump" else 4)
                start = next((int(x) for x in starts if nxt.kind != "jump" or _jump_change(
                    videos, name, int(x) + need - 1, int(x) + need + FPS) >= JUMP_CHANGE), -1)
                if start >= 0:
                    break
            else:
                raise ValueError(f"no source shot of {room} frames in {videos}")
        plan.append((name, start, need, head, tail))
    decoded = _decode_plan(videos, [(n, s, k) for n, s, k, _, _ in plan])
    frames: list[np.ndarray] = []
    labels: list[int] = []
    prev_tail: np.ndarray | None = None  # frames of the previous shot that play under the transition
    for shot, (name, start, need, head, tail) in enumerate(plan):
        st = steps[shot - 1] if shot else Step("cut")
        clip = decoded[(name, start)]
        if len(clip) < need:
            raise ValueError(f"{name} gave {len(clip)} frames from {start}, need {need}")
        comp.sources.append((name, start, start + need))
        body = clip[head : len(clip) - tail]
        # the transition into this shot
        if st.kind in ("cut", "jump"):
            if shot:
                comp.cuts.append(len(frames))
        elif st.kind == "fade":
            k, last = st.frames, frames[-1]
            first_t = len(frames)
            for j in range(k):
                frames.append((last * (1 - (j + 1) / (k + 1))).astype(np.uint8))
            frames.extend([np.zeros_like(last)] * k)
            for j in range(k):
                frames.append((body[0] * ((j + 1) / (k + 1))).astype(np.uint8))
            labels += [-1] * (3 * k)
            comp.transitions += [("fade_out", first_t, first_t + k - 1), ("black", first_t + k, first_t + 2 * k - 1),
                                 ("fade_in", first_t + 2 * k, first_t + 3 * k - 1)]
        else:
            assert prev_tail is not None and len(prev_tail) == st.frames
            first_t = len(frames)
            for j in range(st.frames):
                frames.append(_mix(st.kind, prev_tail[j], clip[j], (j + 1) / (st.frames + 1), st))
            labels += [-1] * st.frames
            comp.transitions.append((st.kind, first_t, first_t + st.frames - 1))
        body = body.copy()
        if shot in flash_shots:  # a white flash of 1-2 frames mid-shot (camera flash, lightning)
            k = int(rng.integers(1, 3))
            at = len(body) // 2
            body[at : at + k] = (0.25 * body[at : at + k] + 0.75 * 255).astype(np.uint8)
            comp.flashes.append((len(frames) + at, len(frames) + at + k - 1))
        frames.extend(body)
        labels += [shot] * len(body)
        prev_tail = clip[len(clip) - tail :] if tail else None
    comp.labels = np.asarray(labels, np.int64)
    write_video(comp.path, frames, fps=FPS)
    return comp
