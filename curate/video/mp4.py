"""Write frames as a video file with PyAV's bundled encoders (no system ffmpeg).

The trainer's previews, `jobs.sample`'s output and the generated test and demo videos all go
through `write_video`.
"""

from __future__ import annotations

from pathlib import Path

import av


def write_video(path: str | Path, frames, fps: int, codec: str = "libx264") -> Path:
    """Encode an iterable of (H, W, 3) uint8 RGB frames."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as out:
        stream = None
        for img in frames:
            if stream is None:
                stream = out.add_stream(codec, rate=fps)
                stream.width, stream.height = img.shape[1], img.shape[0]
                stream.pix_fmt = "yuv420p"
                if codec == "libx264":
                    stream.options = {"preset": "ultrafast", "crf": "20", "g": str(2 * fps)}
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                out.mux(packet)
    return path
