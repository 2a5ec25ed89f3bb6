"""Generated media for tests: bad inputs of every kind, and small videos with known cuts."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from curate.synthetic.synth import Segment, SynthVideo, make_video
from curate.video.mp4 import write_video


def two_shot_video(path: Path, fps: int = 24, seconds: float = 3.0, size=(160, 96)) -> SynthVideo:
    n = int(fps * seconds)
    return make_video(
        path, [Segment("shot", n, 0), Segment("shot", n, 1)], fps=fps, width=size[0], height=size[1]
    )


def audio_only_mp4(path: Path, seconds: float = 1.0, rate: int = 44100) -> Path:
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("aac", rate=rate)
        stream.layout = "mono"
        samples = (np.sin(np.arange(int(rate * seconds)) * 2 * np.pi * 440 / rate) * 0.3).astype(np.float32)
        for i in range(0, len(samples), 1024):
            frame = av.AudioFrame.from_ndarray(samples[None, i : i + 1024], format="fltp", layout="mono")
            frame.sample_rate = rate
            for p in stream.encode(frame):
                out.mux(p)
        for p in stream.encode():
            out.mux(p)
    return path


def one_frame_video(path: Path) -> Path:
    return write_video(path, [np.full((64, 64, 3), 120, np.uint8)], fps=24)


def truncated_copy(src: Path, dst: Path, keep: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def bad_inputs(d: Path, good: Path) -> dict[str, Path]:
    """name -> path of every kind of bad input the issue lists."""
    d.mkdir(parents=True, exist_ok=True)
    out = {
        "zero_byte": d / "empty.mp4",
        "truncated": truncated_copy(good, d / "truncated.mp4"),
        "text_as_mp4": d / "notes.mp4",
        "audio_only": audio_only_mp4(d / "audio_only.mp4"),
        "one_frame": one_frame_video(d / "one_frame.mp4"),
        "missing": d / "does-not-exist.mp4",
    }
    out["zero_byte"].write_bytes(b"")
    out["text_as_mp4"].write_text("this is not a video\n" * 20)
    return out
