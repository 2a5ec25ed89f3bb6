"""Optical-flow motion and camera-motion class of a clip (no weights).

Dense optical flow (OpenCV DIS) between the adjacent frame pairs the score stage already
decodes, at `width` pixels wide. For each pair a similarity motion model
    dx = a*x - b*y + tx,   dy = b*x + a*y + ty     (x, y centred on the frame)
is fitted to a grid of flow vectors robustly (RANSAC, then least squares on the inliers),
so moving subjects do not pull it: the model describes the camera, not the content. Per
second and per frame size (so clips of any size and frame rate compare), with s = the
frame's short side:
- pan/tilt speed: (tx, ty) / s / dt;
- zoom speed: a (relative scale change) times the half-diagonal / s / dt, i.e. how fast
  the frame corners move, on the same scale as the pan speed;
- rotation speed: b, the same way;
- residual: mean |flow - model| over all vectors / s / dt.
The medians over the pairs classify the clip:
  static     the camera's speed (translation, zoom and rotation) is below `static_speed`
             (subjects may move);
  complex    rotation dominates, or the model explains too little of the flow (residual
             above `complex_residual` x the camera speed), or two motions are about as strong
             (a pan and a zoom within `mixed_ratio` of each other);
  zoom_in/out    the zoom term dominates (content grows: zoom_in);
  pan_left/right, tilt_up/down    translation dominates; the camera turning right moves
             the content left (flow dx < 0 -> pan_right), tilting up moves it down.
`flow_magnitude` is the mean flow length in short sides per second (all content motion,
camera and subjects, as the cheap `motion` score but at a higher resolution and with DIS).

Reference: Open-Sora 1.2 camera-motion labels (static, pan, tilt, zoom); Kroeger et al.,
"Fast Optical Flow using Dense Inverse Search" (DIS, ECCV 2016).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from curate.schema import CAMERA_MOTION, FLOW_MAGNITUDE

CAMERA_CLASSES = ("static", "pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out", "complex")


@dataclass(frozen=True)
class FlowConfig:
    enabled: bool = True
    width: int = 160  # flow resolution (frames are resized to this width, aspect kept)
    grid_step: int = 4  # flow vectors sampled every `grid_step` pixels for the model fit
    border: float = 0.05  # share of each side left out of the fit (flow is unreliable at edges)
    static_speed: float = 0.02  # camera speed below this (short sides / s) is static
    complex_residual: float = 1.0  # residual above this x camera speed: not one camera motion
    mixed_ratio: float = 0.6  # second-strongest motion above this x the strongest: complex
    max_gap_s: float = 0.25  # pairs further apart in time are not used (without frame indices)


@dataclass(frozen=True)
class CameraFit:
    """Median over the frame pairs, in short sides per second (see the module docstring)."""

    pan: float  # + : content moves right (camera pans left)
    tilt: float  # + : content moves down (camera tilts up)
    zoom: float  # + : content grows (zoom in)
    rotation: float
    residual: float
    flow_magnitude: float
    label: str


def to_gray(frames: np.ndarray, width: int) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB -> (T, h, width) uint8 grey, aspect kept (area filter)."""
    h, w = frames.shape[1:3]
    size = (width, max(8, round(h * width / w)))
    interp = cv2.INTER_AREA if width < w else cv2.INTER_LINEAR
    return np.stack(
        [cv2.cvtColor(cv2.resize(f, size, interpolation=interp), cv2.COLOR_RGB2GRAY) for f in frames]
    )


def fit_similarity(flow: np.ndarray, step: int = 4, border: float = 0.05) -> tuple[np.ndarray, float, float]:
    """Robust fit of (a, b, tx, ty) to a (h, w, 2) flow field -> (params, inlier residual, all residual).

    RANSAC over a grid of flow vectors (OpenCV's 4-DoF similarity estimator, threshold a
    quarter pixel or 10% of the median flow), so a moving subject does not pull the camera
    model; then a least-squares refit on the inliers. Residuals are mean vector lengths in px.
    """
    h, w = flow.shape[:2]
    by, bx = int(border * h), int(border * w)
    ys, xs = np.mgrid[by : h - by : step, bx : w - bx : step]
    f = flow[ys, xs].reshape(-1, 2).astype(np.float64)  # (gh, gw, 2) -> (N, 2)
    x = xs.reshape(-1).astype(np.float64) - (w - 1) / 2
    y = ys.reshape(-1).astype(np.float64) - (h - 1) / 2
    p = np.stack([x, y], 1)
    thr = max(0.25, 0.1 * float(np.median(np.hypot(f[:, 0], f[:, 1]))))
    _, inl = cv2.estimateAffinePartial2D(
        p.astype(np.float32),
        (p + f).astype(np.float32),
        method=cv2.RANSAC,
        ransacReprojThreshold=thr,
        maxIters=500,
        confidence=0.995,
    )
    keep = inl.reshape(-1).astype(bool) if inl is not None and inl.sum() >= 8 else np.ones(len(x), bool)
    one, zero = np.ones_like(x), np.zeros_like(x)
    # rows: dx = a*x - b*y + tx ; dy = b*x + a*y + ty  -> (2N, 4) design over (a, b, tx, ty)
    design = np.concatenate([np.stack([x, -y, one, zero], 1), np.stack([y, x, zero, one], 1)])
    target = np.concatenate([f[:, 0], f[:, 1]])
    rows = np.concatenate([keep, keep])
    params, *_ = np.linalg.lstsq(design[rows], target[rows], rcond=None)
    res = (design @ params - target).reshape(2, -1)  # (2N,) -> (2, N)
    err = np.hypot(res[0], res[1])
    return params, float(err[keep].mean()), float(err.mean())


def classify(pan: float, tilt: float, zoom: float, rotation: float, residual: float, cfg: FlowConfig) -> str:
    """Camera-motion class from the model's speeds (short sides / s); see the module docstring."""
    trans = float(np.hypot(pan, tilt))
    speeds = {"translation": trans, "zoom": abs(zoom), "rotation": abs(rotation)}
    camera = max(speeds.values())
    if camera < cfg.static_speed:
        return "static"
    ranked = sorted(speeds, key=speeds.get, reverse=True)
    if ranked[0] == "rotation" or residual > cfg.complex_residual * camera:
        return "complex"
    if speeds[ranked[1]] > cfg.mixed_ratio * camera:
        return "complex"
    if ranked[0] == "zoom":
        return "zoom_in" if zoom > 0 else "zoom_out"
    if abs(pan) >= abs(tilt):
        return "pan_left" if pan > 0 else "pan_right"
    return "tilt_up" if tilt > 0 else "tilt_down"


def camera_fit(
    frames: np.ndarray, pts: np.ndarray, cfg: FlowConfig, indices: np.ndarray | None = None
) -> CameraFit:
    """Flow and camera motion of a clip from its decoded frames (sorted by pts).

    With `indices` (decoded-frame numbers), a pair is two entries whose numbers differ by one;
    without, consecutive entries at most `max_gap_s` apart. No pair: static, zero flow.
    """
    gray = to_gray(frames, cfg.width)
    h, w = gray.shape[1:3]
    side = float(min(h, w))
    half_diag = 0.5 * float(np.hypot(h, w))
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
    per_pair = []
    for i in range(len(gray) - 1):
        dt = float(pts[i + 1] - pts[i])
        adjacent = indices[i + 1] - indices[i] == 1 if indices is not None else dt <= cfg.max_gap_s
        if not (adjacent and dt > 0):
            continue
        flow = dis.calc(gray[i], gray[i + 1], None)  # (h, w, 2) pixels, frame i -> i+1
        (a, b, tx, ty), _, res_all = fit_similarity(flow, cfg.grid_step, cfg.border)
        mag = float(np.hypot(flow[..., 0], flow[..., 1]).mean())
        k = 1.0 / side / dt  # pixels per pair -> short sides per second
        per_pair.append((tx * k, ty * k, a * half_diag * k, b * half_diag * k, res_all * k, mag * k))
    if not per_pair:
        return CameraFit(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, "static")
    pan, tilt, zoom, rot, residual, magnitude = (float(v) for v in np.median(np.array(per_pair), axis=0))
    return CameraFit(pan, tilt, zoom, rot, residual, magnitude, classify(pan, tilt, zoom, rot, residual, cfg))


def flow_scores(
    frames: np.ndarray, pts: np.ndarray, cfg: FlowConfig, indices: np.ndarray | None = None
) -> dict:
    """{flow_magnitude, camera_motion} of one clip."""
    fit = camera_fit(frames, pts, cfg, indices)
    return {FLOW_MAGNITUDE: fit.flow_magnitude, CAMERA_MOTION: fit.label}
