"""On-screen text of a clip: PP-OCRv4 text detection + recognition on a few small frames.

Clips dominated by overlaid text (subtitles, watermarks, slides, screen recordings) are
poor text-to-video training data; every large curation pipeline removes them (Open-Sora:
DBNet++ text boxes; Cosmos-Curate: PaddleOCR; Data-Juicer: OCR area ratio). We measure
- `text_area`: share of the frame covered by the union of the detected text boxes, the
  maximum over the OCR frames (a subtitle shown on one of three frames still counts);
- `text_boxes`: the number of text boxes on the frame with the most;
- `ocr_text`: the recognised strings (confidence >= `min_score`), deduplicated, capped.

Weights: the PP-OCRv4 detection (DB) and recognition (SVTR-LCNet, CTC) ONNX files that
the `rapidocr-onnxruntime` wheel carries (`pip install 'tubelet[filters]'`), run with
onnxruntime on CPU from the package directory: nothing downloads. The detector input is
resized so its short side is `det_short_side` (224: a subtitle line of 720p video stays
readable, and detection costs ~30 ms per frame on one core).

Reference: Li et al., "PP-OCRv3/v4" (PaddleOCR, 2022-2023); Liao et al., "Real-time Scene
Text Detection with Differentiable Binarization" (DB, AAAI 2020).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from curate.errors import UsageError
from curate.schema import OCR_TEXT, TEXT_AREA, TEXT_BOXES

DET_MODEL = "ch_PP-OCRv4_det_infer.onnx"
REC_MODEL = "ch_PP-OCRv4_rec_infer.onnx"
INSTALL_HINT = (
    "install the optional extra: pip install 'tubelet[filters]' (rapidocr-onnxruntime==1.4.4, nudenet==3.4.2)"
)


@dataclass(frozen=True)
class OcrConfig:
    enabled: bool = True
    det_short_side: int = 224  # detector input short side (rounded to a multiple of 32)
    det_thresh: float = 0.3  # DB binarisation threshold of the text probability map
    box_thresh: float = 0.5  # mean probability inside a box to keep it
    unclip_ratio: float = 1.6  # DB box expansion (the model predicts shrunk text kernels)
    min_score: float = 0.5  # recognition confidence to keep a string
    max_read_boxes: int = 8  # boxes recognised per frame (largest first): bounds the cost
    max_strings: int = 8  # strings kept per clip
    max_chars: int = 80  # characters kept per string
    threads: int = 1  # onnxruntime intra-op threads (score CPU tasks own one core each)


def models_dir() -> Path:
    """The folder inside the rapidocr-onnxruntime wheel that holds the PP-OCRv4 ONNX weights."""
    try:
        import rapidocr_onnxruntime
    except ImportError as e:
        raise UsageError(f"OCR needs rapidocr-onnxruntime, not installed ({e}); {INSTALL_HINT}") from e
    d = Path(rapidocr_onnxruntime.__file__).parent / "models"
    missing = [f for f in (DET_MODEL, REC_MODEL) if not (d / f).is_file()]
    if missing:
        raise UsageError(
            f"OCR weights {missing} must be inside the rapidocr-onnxruntime wheel at {d}, not found; "
            f"reinstall it: pip install --force-reinstall rapidocr-onnxruntime==1.4.4"
        )
    return d


def union_area(boxes: list[np.ndarray], height: int, width: int) -> float:
    """Share of an (height, width) frame covered by the union of quadrilaterals (each (4, 2) x, y)."""
    if not boxes:
        return 0.0
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round(b).astype(np.int32) for b in boxes], 1)
    return float(mask.mean())


def _crop(img: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Perspective crop of a text box (4, 2) ordered tl, tr, br, bl; upright (PaddleOCR's recipe)."""
    b = box.astype(np.float32)
    w = max(1, round(max(np.linalg.norm(b[0] - b[1]), np.linalg.norm(b[2] - b[3]))))
    h = max(1, round(max(np.linalg.norm(b[0] - b[3]), np.linalg.norm(b[1] - b[2]))))
    m = cv2.getPerspectiveTransform(b, np.float32([[0, 0], [w, 0], [w, h], [0, h]]))
    out = cv2.warpPerspective(img, m, (w, h), borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC)
    return np.rot90(out) if h >= 1.5 * w else out  # vertical text: read it turned


def _norm(s: str) -> str:
    return "".join(s.lower().split())


class TextReader:
    """PP-OCRv4 detector + recognizer; `TextReader(cfg)`, `load()` (sessions), `scores(frames)`."""

    def __init__(self, cfg: OcrConfig):
        self.cfg = cfg
        self.det: Any = None
        self.rec: Any = None

    def load(self) -> None:
        from rapidocr_onnxruntime.ch_ppocr_det import TextDetector
        from rapidocr_onnxruntime.ch_ppocr_rec import TextRecognizer

        d, c = models_dir(), self.cfg
        common = {
            "intra_op_num_threads": c.threads,
            "inter_op_num_threads": 1,
            "use_cuda": False,
            "use_dml": False,
        }
        self.det = TextDetector(
            {
                **common,
                "model_path": str(d / DET_MODEL),
                "limit_side_len": c.det_short_side,
                "limit_type": "min",
                "mean": [0.5, 0.5, 0.5],
                "std": [0.5, 0.5, 0.5],
                "thresh": c.det_thresh,
                "box_thresh": c.box_thresh,
                "max_candidates": 1000,
                "unclip_ratio": c.unclip_ratio,
                "use_dilation": True,
                "score_mode": "fast",
            }
        )
        self.rec = TextRecognizer(
            {**common, "model_path": str(d / REC_MODEL), "rec_img_shape": [3, 48, 320], "rec_batch_num": 8}
        )

    def detect(self, frame: np.ndarray) -> list[np.ndarray]:
        """Text boxes of one (H, W, 3) uint8 RGB frame: (4, 2) float32 corners in frame pixels."""
        if self.det is None:
            self.load()
        boxes, _ = self.det(np.ascontiguousarray(frame[..., ::-1]))  # important: PP-OCR was trained on BGR
        return [] if boxes is None or len(boxes) == 0 else [np.asarray(b, np.float32) for b in boxes]

    def read(self, frame: np.ndarray, boxes: list[np.ndarray]) -> list[tuple[str, float]]:
        """(text, confidence) of each box, in the order given."""
        if not boxes:
            return []
        if self.rec is None:
            self.load()
        bgr = np.ascontiguousarray(frame[..., ::-1])
        res, _ = self.rec([_crop(bgr, b) for b in boxes])
        return [(str(r[0]).strip(), float(r[1])) for r in res]

    def scores(self, frames: np.ndarray) -> dict[str, Any]:
        """(T, H, W, 3) uint8 RGB frames -> {text_area, text_boxes, ocr_text} of the clip."""
        c = self.cfg
        area, n_boxes = 0.0, 0
        strings: dict[str, str] = {}  # normalised -> first spelling seen
        for f in frames:
            boxes = self.detect(f)
            area = max(area, union_area(boxes, f.shape[0], f.shape[1]))
            n_boxes = max(n_boxes, len(boxes))
            biggest = sorted(boxes, key=lambda b: -cv2.contourArea(b))[: c.max_read_boxes]
            for text, conf in self.read(f, biggest):
                if conf >= c.min_score and _norm(text) and len(strings) < c.max_strings:
                    strings.setdefault(_norm(text), text[: c.max_chars])
        return {TEXT_AREA: area, TEXT_BOXES: n_boxes, OCR_TEXT: list(strings.values())}


@functools.lru_cache(maxsize=2)
def reader(cfg: OcrConfig) -> TextReader:
    """One loaded reader per config and process (Ray reuses worker processes across tasks)."""
    r = TextReader(cfg)
    r.load()
    return r
