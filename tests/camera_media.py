"""Generated clips with known camera motion and known on-screen text (ground truth for tests).

Camera motion: a crop window moves over one still source image at a known speed (pans,
tilts), grows or shrinks about its centre (zooms), or stays put (static); each output frame
is the window resampled to the output size, so the true motion is exact. Speeds are in
short sides of the output frame per second, the unit of `curate.scores.flow` (for a zoom: how fast
the frame corners move). Text: a subtitle line or a watermark drawn with PIL's bundled
font, whose pixel box gives the true text area.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# class -> (dx, dy, zoom sign) of the *camera*: pan_right moves the window right, tilt_up up
MOVES = {
    "pan_left": (-1, 0, 0),
    "pan_right": (1, 0, 0),
    "tilt_up": (0, -1, 0),
    "tilt_down": (0, 1, 0),
    "zoom_in": (0, 0, 1),
    "zoom_out": (0, 0, -1),
    "static": (0, 0, 0),
}


def textured_image(seed: int, width: int = 1280, height: int = 720) -> np.ndarray:
    """A still (H, W, 3) uint8 image with detail at several scales (stand-in for a real frame)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.float32)
    for cells, weight in ((8, 0.5), (32, 0.3), (128, 0.2)):
        small = rng.uniform(0, 255, (cells * height // width + 1, cells, 3)).astype(np.float32)
        img += weight * np.asarray(
            Image.fromarray(small.astype(np.uint8)).resize((width, height), Image.BICUBIC), np.float32
        )
    return np.clip(img, 0, 255).astype(np.uint8)


def camera_clip(
    source: np.ndarray,
    kind: str,
    speed: float,
    frames: int = 36,
    fps: int = 24,
    size: tuple[int, int] = (320, 180),
    window: float = 0.5,
) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of a camera `kind` at `speed` over `source` (see the module docstring)."""
    import cv2

    sh, sw = source.shape[:2]
    ow, oh = size
    cw0, ch0 = sw * window, sw * window * oh / ow  # window size in source pixels at t=0
    dx, dy, dz = MOVES[kind]
    half_diag = 0.5 * np.hypot(ow, oh)
    out = []
    for i in range(frames):
        t = i / fps
        # zoom: the frame corners move `speed` short sides/s -> scale rate speed*short/half_diag per s
        scale = np.exp(-dz * speed * oh / half_diag * t)  # window shrinks when zooming in
        cw = cw0 * scale
        # translation: `speed` output short sides per second, in source pixels (window short side = ch0)
        cx = sw / 2 + dx * speed * ch0 * t
        cy = sh / 2 + dy * speed * ch0 * t
        s = ow / cw  # source -> output scale
        m = np.float32([[s, 0, ow / 2 - s * cx], [0, s, oh / 2 - s * cy]])
        out.append(
            cv2.warpAffine(
                source, m, (ow, oh), flags=cv2.INTER_AREA | cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
            )
        )
    return np.stack(out)


def draw_text(
    frame: np.ndarray, text: str, height_share: float, where: str = "bottom", boxed: bool = False
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Draw `text` (font size = height_share x frame height) -> (frame, true box x0, y0, x1, y1).

    where: "bottom" (a centred subtitle) or "corner" (a top-right watermark).
    """
    h, w = frame.shape[:2]
    img = Image.fromarray(frame)
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(8, round(height_share * h)))
    x0, y0, x1, y1 = d.textbbox((0, 0), text, font=font, stroke_width=2)
    tw, th = x1 - x0, y1 - y0
    x, y = ((w - tw) // 2, int(h * 0.92) - th) if where == "bottom" else (w - tw - w // 30, h // 20)
    if boxed:
        d.rectangle((x - 4, y - 4, x + tw + 4, y + th + 4), fill=(0, 0, 0))
    d.text((x - x0, y - y0), text, font=font, fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
    return np.asarray(img), (x, y, x + tw, y + th)
