"""NSFW score of a clip: NudeNet's exposed-body-part detector on a few small frames.

`nsfw` is a frame's highest confidence, over the detector's anchors, of any explicit class
(exposed genitalia, female breast, buttocks, anus), taken at the clip's second-highest frame
(two frames must agree, see `clip_score`); 0 when the detector sees none. Faces, feet,
covered parts and exposed male chests are not counted. A cascade rule drops clips above a
threshold.

Weights: NudeNet v3's YOLOv8n detector at 320x320 (`320n.onnx`), which the `nudenet`
wheel carries (`pip install 'tubelet[filters]'`); run with onnxruntime on CPU from the
package directory, nothing downloads. We run the session ourselves, batched over a clip's
frames, with NudeNet's own preprocessing (pad to a square at the bottom/right, resize to
320, RGB in [0, 1]); NudeNet's `detect()` expects BGR(A) file images and applies NMS, which
a maximum does not need.

Reference: github.com/notAI-tech/NudeNet (v3).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from curate.errors import UsageError
from curate.schema import NSFW
from curate.scores.ocr import INSTALL_HINT

MODEL = "320n.onnx"
# NudeNet v3 class order (the model's 18 outputs after the 4 box coordinates)
LABELS = (
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)
EXPLICIT = (
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "ANUS_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
)


@dataclass(frozen=True)
class NsfwConfig:
    enabled: bool = True
    input_size: int = 320  # the shipped model's training size
    threads: int = 1  # onnxruntime intra-op threads


def model_path() -> Path:
    try:
        import nudenet
    except ImportError as e:
        raise UsageError(f"the NSFW score needs nudenet, not installed ({e}); {INSTALL_HINT}") from e
    p = Path(nudenet.__file__).parent / MODEL
    if not p.is_file():
        raise UsageError(
            f"NSFW weights {MODEL} must be inside the nudenet wheel at {p.parent}, not found; "
            "reinstall it: pip install --force-reinstall nudenet==3.4.2"
        )
    return p


def preprocess(frames: np.ndarray, size: int) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB -> (T, 3, size, size) float32: padded square, resized, in [0, 1]."""
    out = []
    for f in frames:
        h, w = f.shape[:2]
        side = max(h, w)
        sq = cv2.copyMakeBorder(f, 0, side - h, 0, side - w, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        out.append(cv2.resize(sq, (size, size), interpolation=cv2.INTER_LINEAR))
    x = np.stack(out).astype(np.float32) / 255.0  # (T, size, size, 3)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # (T, size, size, 3) -> (T, 3, size, size)


class NsfwDetector:
    """`NsfwDetector(cfg)`, `load()` (the ONNX session), `frame_scores(frames)`, `scores(frames)`."""

    def __init__(self, cfg: NsfwConfig):
        self.cfg = cfg
        self.session: Any = None
        self.explicit = np.array([LABELS.index(c) for c in EXPLICIT])

    def load(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.cfg.threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(model_path()), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self.input = self.session.get_inputs()[0].name

    def frame_scores(self, frames: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB -> (T,) highest explicit-class confidence per frame."""
        if self.session is None:
            self.load()
        out = self.session.run(None, {self.input: preprocess(frames, self.cfg.input_size)})[
            0
        ]  # (T, 4+18, anchors)
        cls = out[:, 4:, :][:, self.explicit, :]  # (T, 18, A) -> (T, 5, A)
        return cls.max(axis=(1, 2)).astype(np.float32)  # (T, 5, A) -> (T,)

    def scores(self, frames: np.ndarray) -> dict[str, float]:
        return {NSFW: clip_score(self.frame_scores(frames))}


def clip_score(per_frame: np.ndarray) -> float:
    """The clip's score: the second-highest frame score (the highest for a one-frame clip).

    important: not the maximum. The detector fires on single frames of ordinary footage (a
    cartoon rabbit's back scored 0.63-0.67 on one frame of eight, under 0.3 on the others);
    asking two frames to agree removes such blips, while explicit content that lasts shows on
    several of the sampled frames."""
    if not len(per_frame):
        return 0.0
    top = np.sort(per_frame)[::-1]
    return float(top[1] if len(top) > 1 else top[0])


@functools.lru_cache(maxsize=2)
def detector(cfg: NsfwConfig) -> NsfwDetector:
    """One loaded detector per config and process (Ray reuses worker processes across tasks)."""
    d = NsfwDetector(cfg)
    d.load()
    return d
