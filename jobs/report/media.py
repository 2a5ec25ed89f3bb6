"""Pictures for the run report: score histograms (matplotlib PNG) and animated clip previews (GIF).

Kept apart from jobs/report/build.py (which gathers the data and writes the HTML) so each file has one job.
Matplotlib is driven through `Figure` + the Agg canvas directly: no pyplot, no global backend
switch, safe to call from any process or thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from curate.io import storage
from curate.video.decode import decode_clip, sample_uniform

PREVIEW_FRAMES = 8  # frames per animated preview
PREVIEW_SIDE = 160  # longer side of a preview, pixels
PREVIEW_VERSION = "v1"  # part of the file name: a changed preview recipe never reuses old files
BAR_PX = 3  # height of the progress bar drawn under each preview frame


@dataclass(frozen=True)
class Line:
    """A vertical line on a histogram: a filter threshold or a percentile cutoff."""

    label: str  # the legend text, e.g. "sharpness >= 100" or "aesthetic top 70% cutoff 4.31"
    value: float


def _atomic_save(dest: Path, save) -> Path:
    """Write via a temporary file in the same folder, then rename (a killed build leaves no half file)."""
    with storage.atomic_output(dest) as tmp:  # the file follows the umask
        save(tmp)
    return dest


HIST_BINS = 30  # bins of a score histogram (a boolean score gets two)


def histogram_edges(
    bounds: tuple[float, float] | None, lines: Sequence[float], boolean: bool = False, bins: int = HIST_BINS
) -> np.ndarray:
    """The bin edges of a score histogram, fixed before its values are counted: the finite range
    of the values (None: no finite value) widened to the threshold `lines`, so a threshold
    outside the data still shows. A `boolean` score gets the bins no (0) and yes (1)."""
    if boolean:
        return np.array([-0.5, 0.5, 1.5])
    lo, hi = bounds if bounds is not None else (0.0, 1.0)
    for v in lines:
        lo, hi = min(lo, v), max(hi, v)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, bins + 1)


def score_histogram(
    column: str,
    edges: np.ndarray,
    kept: np.ndarray,
    dropped: np.ndarray,
    lines: Sequence[Line],
    dest: Path,
    missing: int = 0,
    boolean: bool = False,
) -> Path:
    """A stacked kept/dropped histogram of one score, drawn from its bin counts over `edges`
    (`histogram_edges`), with its thresholds drawn in, as a PNG. `missing`: clips without a
    finite value, said in the title. A `boolean` score gets two bars, no and yes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(4.4, 2.8), dpi=90)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    # one weighted sample at each bin's left edge: the bars ax.hist would draw from the raw values
    left = edges[:-1]
    ax.hist(
        [left, left],
        bins=edges,
        weights=[kept, dropped],
        stacked=True,
        rwidth=0.6 if boolean else None,
        color=["#2f8f46", "#b0b0b0"],
        label=[f"kept ({int(kept.sum())})", f"dropped ({int(dropped.sum())})"],
    )
    for i, ln in enumerate(lines):
        ax.axvline(
            ln.value, color="#c0392b", linestyle="--" if i % 2 == 0 else ":", linewidth=1.4, label=ln.label
        )
    # e.g. no aesthetic: dropped by a cheap rule first
    ax.set_title(column + (f"  ({missing} clips without a value)" if missing else ""), fontsize=10)
    ax.set_ylabel("clips", fontsize=8)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if boolean:
        ax.set_xticks([0, 1], ["no", "yes"])
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return _atomic_save(dest, lambda tmp: fig.savefig(tmp, format="png"))


def _with_progress(frame: np.ndarray, i: int, n: int) -> np.ndarray:
    """Append a thin bar showing where in the clip the frame sits.

    important: GIF (and WebP) encoders merge identical consecutive frames, so a still clip
    would come out as a one-frame image; the moving bar keeps every preview animated and
    tells the viewer how far into the clip each frame is.
    """
    w = frame.shape[1]  # frame: (H, W, 3)
    bar = np.full((BAR_PX, w, 3), 40, np.uint8)  # (BAR_PX, W, 3)
    bar[:, : max(1, round(w * (i + 1) / n))] = (230, 180, 40)
    return np.concatenate([frame, bar], axis=0)  # (H + BAR_PX, W, 3)


def preview_name(clip_id: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in clip_id)
    return f"clip-{safe}-{PREVIEW_VERSION}.gif"


def clip_preview(
    path: str,
    start_pts: float,
    end_pts: float,
    frames_in_span: int,
    dest: Path,
    n: int = PREVIEW_FRAMES,
    max_side: int = PREVIEW_SIDE,
) -> Path:
    """Decode `n` frames of the span once (small) and save them as a looping animated GIF."""
    clip = decode_clip(
        path,
        start_pts,
        end_pts,
        offsets=sample_uniform(max(1, frames_in_span), n, margin=0.02),
        max_side=max_side,
    )
    frames = list(clip.frames) * (2 if len(clip.frames) == 1 else 1)  # a one-frame span still animates
    t = len(frames)
    images = [Image.fromarray(_with_progress(f, i, t)) for i, f in enumerate(frames)]
    # play roughly at real speed, but never slower than 0.4 s or faster than 0.08 s a frame
    ms = int(min(400, max(80, 1000 * (end_pts - start_pts) / t)))
    return _atomic_save(
        dest,
        lambda tmp: images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], duration=ms, loop=0
        ),
    )


def gif_frame_count(path: Path) -> int:
    with Image.open(path) as im:
        return int(getattr(im, "n_frames", 1))
