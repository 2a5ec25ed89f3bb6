"""Test composites of real footage joined by drawn transitions, with exact per-frame ground truth.

Shots are cut from real videos at frames that their ground truth (`shot_boundaries.json`,
see tests/conftest.py) marks as inside one shot, decoded with PyAV at a small size, plus a
few generated moving patterns (curate/synthetic/synth.py), and joined the way an editor's timeline
does: during a gradual transition the outgoing shot keeps playing under the incoming one.

`draw_steps(rng, n)` draws a programme of transitions (seeded, nothing fixed):
- hard cuts, and jump cuts (the same source after a skip of 1-3 s);
- dissolves of 6-40 frames; fades through black (fade-out 4-30, black 2-12, fade-in 4-30);
- wipes of 4-40 frames: linear at any angle, iris in/out, clock (any start angle, either
  way round), barn doors (opening or closing, horizontal, vertical or at an angle), hard or
  feathered edges;
- slides and pushes of 4-40 frames in the four axis directions;
every gradual one with linear or ease-in-out progress. Inside shots, negatives that are
no shot change: camera pans (the shot seen through a moving crop), fast motion (a shaking
crop) and flashes of 1-3 frames.

Ground truth per output frame: `labels[i]` = shot id (>= 0) or -1 for a transition frame. A
frame of a transition's nominal span is a transition frame when it differs visibly from the
shot that plays there alone (`VISIBLE`: at least 0.05% of its pixels off by 3 levels or
more): with eased progress the first and last frames of a long dissolve may change nothing.
Deterministic for a seed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import av
import cv2
import numpy as np

from curate.synthetic.synth import pattern_frame
from curate.video.mp4 import write_video

SIZE = (320, 180)  # (w, h) of the composite
FPS = 25
SLIDE_DIRS = ("right", "left", "down", "up")  # the way the incoming shot moves
WIPE_SHAPES = ("linear", "iris_out", "iris_in", "clock", "barn_open", "barn_close")
JUMP_CHANGE = 20.0  # mean |RGB difference| across a jump cut, at least (0-255)
VISIBLE = (3, 0.0005)  # a frame changed by a transition: this share of pixels off by this many levels
SYNTH_SHARE = 0.2  # share of shots drawn from generated patterns instead of real footage
# old fixed names -> (shape, angle in degrees, image coordinates: 0 = rightwards, 90 = downwards)
_NAMED = {
    "right": ("linear", 0.0),
    "down": ("linear", 90.0),
    "left": ("linear", 180.0),
    "up": ("linear", 270.0),
    "down_right": ("linear", 45.0),
    "up_left": ("linear", 225.0),
    "iris_out": ("iris_out", 0.0),
    "iris_in": ("iris_in", 0.0),
}


@dataclass(frozen=True)
class Step:
    """One transition from the previous shot into the next.

    `frames`: length of a gradual transition (fade: of the fade-out); `shape`: wipe shape or
    slide/push direction; `angle`: degrees (linear wipe direction, clock start, barn-door
    axis); `soft`: feathered edge width as a share of the wipe (0: hard); `ease`: ease-in-out
    progress; `black`, `fade_in`: a fade's black and fade-in frames; `skip`: a jump cut's
    skipped source frames; `clockwise`: a clock wipe's way round.
    """

    kind: str  # cut | jump | dissolve | fade | wipe | slide | push
    frames: int = 0
    shape: str = ""
    soft: float = 0.0
    angle: float = 0.0
    ease: bool = False
    black: int = 0
    fade_in: int = 0
    skip: int = FPS
    clockwise: bool = True

    @property
    def total(self) -> int:
        """Output frames this transition adds between two shots."""
        if self.kind == "fade":
            return self.frames + (self.black or self.frames) + (self.fade_in or self.frames)
        return self.frames if self.kind in GRADUAL else 0

    def label(self) -> str:
        """A short name for per-type tables (e.g. `wipe:clock`, `dissolve:long`)."""
        if self.kind == "wipe":
            return f"wipe:{self.shape}" + (":soft" if self.soft else "")
        if self.kind == "dissolve":
            return "dissolve:long" if self.frames >= 20 else "dissolve:short"
        return self.kind


GRADUAL = ("dissolve", "wipe", "slide", "push")


@dataclass(frozen=True)
class Negative:
    """Something inside a shot that is no shot change: kind pan | shake | flash, its frames
    from the shot's body start, and its length."""

    kind: str
    at: int
    frames: int
    angle: float = 0.0
    travel: float = 0.0  # pan: share of the crop's free range travelled


@dataclass
class Composite:
    path: Path
    fps: int
    labels: np.ndarray  # (N,) int: shot id, or -1 inside a transition
    cuts: list[int] = field(default_factory=list)  # first frame of each shot after a hard/jump cut
    # (kind, first, last) inclusive nominal spans; `label` names from Step.label() (black: "black")
    transitions: list[tuple[str, int, int]] = field(default_factory=list)
    labelled: list[tuple[str, int, int]] = field(
        default_factory=list
    )  # (Step.label(), first, last) per transition
    flashes: list[tuple[int, int]] = field(default_factory=list)  # inclusive; part of their shot
    negatives: list[tuple[str, int, int]] = field(
        default_factory=list
    )  # (kind, first, last), part of their shot
    sources: list[tuple[str, int, int]] = field(default_factory=list)  # (file, first, end) per shot
    steps: tuple[Step, ...] = ()

    @property
    def num_frames(self) -> int:
        return len(self.labels)

    def shots(self) -> list[tuple[int, int]]:
        """Inclusive [first, last] frames of each shot id."""
        ids = self.labels
        return [
            (int(np.flatnonzero(ids == s)[0]), int(np.flatnonzero(ids == s)[-1]))
            for s in range(ids.max() + 1)
        ]


# A fixed programme: every transition family the detectors must handle, with flashes inside shots.
DEFAULT_STEPS: tuple[Step, ...] = (
    Step("cut"),
    Step("wipe", 12, "right"),
    Step("dissolve", 12),
    Step("wipe", 6, "down"),
    Step("jump"),
    Step("slide", 12, "left"),
    Step("wipe", 24, "left"),
    Step("cut"),
    Step("fade", 10),
    Step("wipe", 16, "up"),
    Step("push", 16, "right"),
    Step("dissolve", 24),
    Step("wipe", 10, "down_right", 0.1),
    Step("wipe", 18, "iris_out"),
    Step("cut"),
    Step("dissolve", 6),
    Step("push", 8, "up"),
    Step("wipe", 14, "up_left"),
    Step("slide", 20, "down"),
    Step("jump"),
    Step("wipe", 12, "iris_in"),
    Step("cut"),
    Step("wipe", 8, "left", 0.05),
    Step("slide", 10, "up"),
)

# how often each kind is drawn
_KIND_WEIGHTS = {
    "cut": 2.0,
    "jump": 1.5,
    "dissolve": 2.5,
    "fade": 1.0,
    "wipe": 4.0,
    "slide": 0.8,
    "push": 0.8,
}


def draw_step(rng: np.random.Generator) -> Step:
    kinds = list(_KIND_WEIGHTS)
    p = np.asarray([_KIND_WEIGHTS[k] for k in kinds])
    kind = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
    ease = bool(rng.random() < 0.5)
    if kind == "cut":
        return Step("cut")
    if kind == "jump":
        return Step("jump", skip=int(rng.integers(FPS, 3 * FPS + 1)))
    if kind == "dissolve":
        return Step("dissolve", int(rng.integers(6, 41)), ease=ease)
    if kind == "fade":
        return Step(
            "fade",
            int(rng.integers(4, 31)),
            black=int(rng.integers(2, 13)),
            fade_in=int(rng.integers(4, 31)),
            ease=ease,
        )
    if kind in ("slide", "push"):
        return Step(kind, int(rng.integers(4, 41)), str(rng.choice(SLIDE_DIRS)), ease=ease)
    shape = str(rng.choice(WIPE_SHAPES, p=[0.4, 0.12, 0.12, 0.14, 0.11, 0.11]))
    soft = float(rng.uniform(0.03, 0.25)) if rng.random() < 0.4 else 0.0
    return Step(
        "wipe",
        int(rng.integers(4, 41)),
        shape,
        soft,
        float(rng.uniform(0, 360)),
        ease,
        clockwise=bool(rng.random() < 0.5),
    )


def draw_steps(rng: np.random.Generator, n: int) -> tuple[Step, ...]:
    """`n` drawn steps; a jump cut right after a jump cut becomes a hard cut (the source of a
    jump's first shot holds room for one jump, not a chain of them)."""
    steps: list[Step] = []
    for _ in range(n):
        st = draw_step(rng)
        steps.append(Step("cut") if st.kind == "jump" and steps and steps[-1].kind == "jump" else st)
    return tuple(steps)


def draw_negatives(rng: np.random.Generator, body: int) -> list[Negative]:
    """Up to one pan or shake and one flash in a shot body of `body` frames (none in ~40% of shots)."""
    out: list[Negative] = []
    r = rng.random()
    if r < 0.3 and body >= 40:
        k = int(rng.integers(10, min(31, body - 20)))
        out.append(
            Negative(
                "pan",
                int(rng.integers(8, body - k - 8)),
                k,
                float(rng.uniform(0, 360)),
                float(rng.uniform(0.5, 1.0)),
            )
        )
    elif r < 0.5 and body >= 36:
        k = int(rng.integers(6, 17))
        out.append(Negative("shake", int(rng.integers(8, body - k - 8)), k))
    if rng.random() < 0.3:
        k = int(rng.integers(1, 4))
        taken = [(n.at - 3, n.at + n.frames + 3) for n in out]
        for _ in range(5):
            at = int(rng.integers(6, body - k - 6))
            if not any(a <= at + k and at <= b for a, b in taken):
                out.append(Negative("flash", at, k))
                break
    return out


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
        for h in g.get("hard_negatives", []):  # a fast tilt: kept out so that negatives are ours
            bad[h["range"][0] : h["range"][1] + 1] = True
        if "hand covers lens" in str(g.get("notes", "")):
            bad[265:] = True
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


def _synth_frames(name: str, first: int, count: int) -> np.ndarray:
    """Frames of a generated source `synth:<pattern>:<speed>`."""
    _, pattern, speed = name.split(":")
    return np.stack([pattern_frame(int(pattern), (first + t) * float(speed), *SIZE) for t in range(count)])


def _decode_plan(videos: Path, wanted: list[tuple[str, int, int]]) -> dict[tuple[str, int], np.ndarray]:
    """(file, first, count) -> (count, h, w, 3) uint8 RGB frames at SIZE; each file decoded once."""
    out: dict[tuple[str, int], np.ndarray] = {}
    for name in sorted({w[0] for w in wanted}):
        spans = [(s, k) for n, s, k in wanted if n == name]
        if name.startswith("synth:"):
            for s, k in spans:
                out[(name, s)] = _synth_frames(name, s, k)
            continue
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


def _field(st: Step, h: int, w: int) -> np.ndarray:
    """(h, w) in [0, 1]: when a pixel turns to the new shot, as a share of the wipe."""
    shape, angle = _NAMED.get(st.shape, (st.shape, st.angle))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    x, y = (xx + 0.5 - w / 2) / w, (yy + 0.5 - h / 2) / w  # centred, in widths (pixels are square)
    th = math.radians(angle)
    along = x * math.cos(th) + y * math.sin(th)
    if shape == "linear":
        f = along
    elif shape in ("iris_out", "iris_in"):
        r = np.hypot(x, y)
        f = r if shape == "iris_out" else -r
    elif shape == "clock":
        turn = (np.arctan2(y, x) - th) % (2 * math.pi)
        f = turn if st.clockwise else (2 * math.pi - turn) % (2 * math.pi)
    else:  # barn doors: an edge pair opening from (closing onto) the line through the centre at `angle`
        d = np.abs(along)
        f = d if shape == "barn_open" else -d
    return (f - f.min()) / (f.max() - f.min())


def _progress(st: Step, j: int, k: int | None = None) -> float:
    """Share of the transition done at its frame j (0-based) of k (default `st.frames`)."""
    k = st.frames if k is None else k
    t = (j + 1) / (k + 1)
    return 0.5 - 0.5 * math.cos(math.pi * t) if st.ease else t


def _wipe(a: np.ndarray, b: np.ndarray, p: float, st: Step) -> np.ndarray:
    f = _field(st, *a.shape[:2])
    if st.soft > 0:  # a feathered edge: a ramp of width `soft` (share of the field) sweeping with the wipe
        m = np.clip((p * (1 + st.soft) - f) / st.soft, 0.0, 1.0)[..., None]
    else:
        m = (f < p).astype(np.float32)[..., None]
    return (a * (1 - m) + b * m).astype(np.uint8)


def _orient(img: np.ndarray, d: str) -> np.ndarray:
    """Turn `img` so that direction `d` becomes "right" (and back with `_unorient`)."""
    return {
        "right": img,
        "left": img[:, ::-1],
        "down": img.transpose(1, 0, 2),
        "up": img[::-1].transpose(1, 0, 2),
    }[d]


def _unorient(img: np.ndarray, d: str) -> np.ndarray:
    return {
        "right": img,
        "left": img[:, ::-1],
        "down": img.transpose(1, 0, 2),
        "up": img.transpose(1, 0, 2)[::-1],
    }[d]


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


def _mix(a: np.ndarray, b: np.ndarray, p: float, st: Step) -> np.ndarray:
    if st.kind == "dissolve":
        return (a * (1 - p) + b * p).astype(np.uint8)
    if st.kind == "wipe":
        return _wipe(a, b, p, st)
    return _slide(a, b, p, st.shape, push=st.kind == "push")


def visible(frame: np.ndarray, pure: np.ndarray) -> bool:
    """Whether `frame` differs visibly from `pure` (see `VISIBLE`)."""
    off = np.abs(frame.astype(np.int16) - pure).max(axis=-1) >= VISIBLE[0]
    return bool(off.mean() >= VISIBLE[1])


_ZOOM = 1.35  # a pan or shake looks at the shot through a crop of 1/_ZOOM of it


def _through_crop(body: np.ndarray, neg: Negative, rng: np.random.Generator) -> np.ndarray:
    """The whole body seen through a crop that moves during `neg` (pan: eased along an angle;
    shake: a new random place every frame) and stays put before and after it."""
    h, w = body.shape[1:3]
    zw, zh = round(w * _ZOOM), round(h * _ZOOM)
    free = np.array([zw - w, zh - h], np.float64)  # (x, y) range of the crop's corner
    n = len(body)
    pos = np.zeros((n, 2))
    if neg.kind == "pan":
        d = np.array([math.cos(math.radians(neg.angle)), math.sin(math.radians(neg.angle))])
        start = free / 2 - d * free * neg.travel / 2
        end = free / 2 + d * free * neg.travel / 2
        for t in range(n):
            u = min(1.0, max(0.0, (t - neg.at + 1) / (neg.frames + 1)))
            u = 0.5 - 0.5 * math.cos(math.pi * u)
            pos[t] = start + (end - start) * u
    else:
        pos[:] = free / 2
        for t in range(neg.at, neg.at + neg.frames):
            pos[t] = rng.uniform(0, 1, 2) * free
    pos = np.clip(pos.round(), 0, free).astype(int)
    out = np.empty_like(body)
    for t in range(n):
        big = cv2.resize(body[t], (zw, zh), interpolation=cv2.INTER_LINEAR)
        out[t] = big[pos[t, 1] : pos[t, 1] + h, pos[t, 0] : pos[t, 0] + w]
    return out


def _flash(body: np.ndarray, neg: Negative) -> None:
    """A white flash: full for 1-2 frames; a 3-frame one decays."""
    levels = (0.75,) * neg.frames if neg.frames < 3 else (0.85, 0.55, 0.25)
    for j, lv in enumerate(levels):
        t = neg.at + j
        body[t] = (body[t] * (1 - lv) + 255 * lv).astype(np.uint8)


def _pick_source(rng, order, synth, scene, plan, src_i, room, need, nxt, videos):
    """(file, first frame, next pool index) of a source with `room` frames, or None."""
    for _ in range(len(order) + len(synth)):
        if rng.random() < SYNTH_SHARE:
            name, first, end = synth[int(rng.integers(0, len(synth)))]
        else:
            name, first, end = order[src_i % len(order)]
            src_i += 1
        if end - first < room or (plan and scene[name] == scene[plan[-1][0]]):
            continue  # too short, or the same scene as the shot before (no visible change)
        if name.startswith("synth:"):
            if nxt.kind == "jump":
                continue  # a moving pattern repeats itself: no jump to see
            return name, int(rng.integers(0, 1000)), src_i
        starts = first + rng.integers(0, end - first - room + 1, size=1 if nxt.kind != "jump" else 3)
        start = next(
            (
                int(x)
                for x in starts
                if nxt.kind != "jump"
                or _jump_change(videos, name, int(x) + need - 1, int(x) + need + nxt.skip) >= JUMP_CHANGE
            ),
            -1,
        )
        if start >= 0:
            return name, start, src_i
    return None


def make_composite(
    path: str | Path,
    videos: Path,
    steps: tuple[Step, ...] | None = DEFAULT_STEPS,
    seed: int = 0,
    shot_frames: tuple[int, int] = (70, 100),
    flashes: int = 4,
    num_steps: int = 14,
    negatives: bool = False,
) -> Composite:
    """Write a composite of shots from `videos` (with shot_boundaries.json) joined by `steps`.

    `steps` None: `num_steps` transitions drawn from the seed (`draw_steps`), with negatives
    inside shots when `negatives`; otherwise `flashes` white flashes of 1-2 frames are put in
    the middle of shots. Shot lengths are drawn from `shot_frames` (the clip policy's 2 s
    minimum at 25 fps is 50 frames).
    """
    rng = np.random.default_rng(seed)
    drawn = steps is None
    if steps is None:
        steps = draw_steps(rng, num_steps)
    gt = json.loads((videos / "shot_boundaries.json").read_text())
    pool = source_shots(gt, shot_frames[0])
    synth = [
        (f"synth:{p}:{s}", 0, 100000)
        for p, s in ((int(rng.integers(0, 64)), float(rng.uniform(0.05, 0.6))) for _ in range(8))
    ]
    scene = same_scene(gt) | {n: n for n, _, _ in synth}
    order = [pool[i] for i in rng.permutation(len(pool))]
    comp = Composite(Path(path), FPS, np.zeros(0, np.int64), steps=tuple(steps))
    flash_shots = (
        set()
        if drawn or negatives
        else set(rng.choice(len(steps) + 1, size=min(flashes, len(steps) + 1), replace=False).tolist())
    )
    # plan: (file, first frame, frames, head, tail) per shot; head/tail play under the transitions
    plan: list[tuple[str, int, int, int, int]] = []
    src_i = 0
    all_steps = (Step("cut"), *steps, Step("cut"))
    lengths = rng.integers(shot_frames[0], shot_frames[1] + 1, size=len(steps) + 1)
    for i in range(len(steps) + 1):  # the two shots of a jump cut share one source: keep them short
        if "jump" in (all_steps[i].kind, all_steps[i + 1].kind):
            lengths[i] = shot_frames[0]
    needs = [
        int(n) + sum(s.frames for s in all_steps[i : i + 2] if s.kind in GRADUAL)
        for i, n in enumerate(lengths)
    ]
    for shot in range(len(steps) + 1):
        st, nxt = all_steps[shot], all_steps[shot + 1]
        head = st.frames if st.kind in GRADUAL else 0
        tail = nxt.frames if nxt.kind in GRADUAL else 0
        need = needs[shot]
        if st.kind == "jump":
            # same source, a skip further on: the view jumps, as in an edited interview
            name, start = plan[-1][0], plan[-1][1] + plan[-1][2] + st.skip
        else:
            # a shot before a jump cut needs room for the next shot in its source, and the view
            # must change across the jump (on a locked-off camera or a still scene it does not)
            got = None
            while got is None:
                nxt = all_steps[shot + 1]
                room = need + (nxt.skip + needs[shot + 1] if nxt.kind == "jump" else 0)
                got = _pick_source(rng, order, synth, scene, plan, src_i, room, need, nxt, videos)
                if got is None:
                    if nxt.kind != "jump":
                        raise ValueError(f"no source shot of {room} frames in {videos}")
                    # no source holds both shots of this jump cut: it becomes a hard cut
                    all_steps = (*all_steps[: shot + 1], Step("cut"), *all_steps[shot + 2 :])
                    steps = all_steps[1:-1]
            name, start, src_i = got
        plan.append((name, start, need, head, tail))
    comp.steps = tuple(steps)
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
        near_jump = "jump" in (st.kind, all_steps[shot + 1].kind)
        negs = draw_negatives(rng, need - head - tail) if negatives else []
        if near_jump:  # the two shots of a jump cut keep one look: no crop
            negs = [n for n in negs if n.kind == "flash"]
        for neg in negs:
            if neg.kind in ("pan", "shake"):  # the whole shot through the crop, its heads and tails included
                clip = _through_crop(
                    clip, Negative(neg.kind, neg.at + head, neg.frames, neg.angle, neg.travel), rng
                )
        body = clip[head : len(clip) - tail].copy()
        # the transition into this shot
        if st.kind in ("cut", "jump"):
            if shot:
                comp.cuts.append(len(frames))
        elif st.kind == "fade":
            k_out, k_black, k_in = st.frames, st.black or st.frames, st.fade_in or st.frames
            last = frames[-1]
            first_t = len(frames)
            for j in range(k_out):
                frames.append((last * (1 - _progress(st, j, k_out))).astype(np.uint8))
            frames.extend([np.zeros_like(last)] * k_black)
            for j in range(k_in):
                frames.append((body[0] * _progress(st, j, k_in)).astype(np.uint8))
            labels += [-1] * (k_out + k_black + k_in)
            comp.transitions += [
                ("fade_out", first_t, first_t + k_out - 1),
                ("black", first_t + k_out, first_t + k_out + k_black - 1),
                ("fade_in", first_t + k_out + k_black, first_t + k_out + k_black + k_in - 1),
            ]
            comp.labelled.append(("fade", first_t, len(frames) - 1))
        else:
            assert prev_tail is not None and len(prev_tail) == st.frames
            first_t = len(frames)
            seen = []
            for j in range(st.frames):
                mixed = _mix(prev_tail[j], clip[j], _progress(st, j), st)
                frames.append(mixed)
                seen.append((visible(mixed, prev_tail[j]), visible(mixed, clip[j])))
            # leading frames that show the old shot unchanged belong to it, trailing ones that
            # show the new shot unchanged to the new one (the eased ends of long transitions)
            lead = next((j for j, (off_prev, _) in enumerate(seen) if off_prev), st.frames)
            trail = next((j for j, (_, off_next) in enumerate(reversed(seen)) if off_next), st.frames)
            trail = min(trail, st.frames - lead)
            labels += [shot - 1] * lead + [-1] * (st.frames - lead - trail) + [shot] * trail
            comp.transitions.append((st.kind, first_t, first_t + st.frames - 1))
            comp.labelled.append((st.label(), first_t, first_t + st.frames - 1))
        at0 = len(frames)
        if shot in flash_shots:  # a white flash of 1-2 frames mid-shot (camera flash, lightning)
            k = int(rng.integers(1, 3))
            at = len(body) // 2
            body[at : at + k] = (0.25 * body[at : at + k] + 0.75 * 255).astype(np.uint8)
            comp.flashes.append((at0 + at, at0 + at + k - 1))
        for neg in negs:
            if neg.kind == "flash":
                _flash(body, neg)
                comp.flashes.append((at0 + neg.at, at0 + neg.at + neg.frames - 1))
            comp.negatives.append((neg.kind, at0 + neg.at, at0 + neg.at + neg.frames - 1))
        frames.extend(body)
        labels += [shot] * len(body)
        prev_tail = clip[len(clip) - tail :] if tail else None
    comp.labels = np.asarray(labels, np.int64)
    write_video(comp.path, frames, fps=FPS)
    return comp
