"""One part writer: the same videos through jobs.curate and through the stage-by-stage jobs give
byte-identical captions parts and latent shards (sha256 of each file, names aside: encode's
shard names carry its resume key)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from jobs.demo import make_samples

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _digests(folder: Path, pattern: str) -> list[str]:
    return sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob(pattern))


def test_curate_and_stage_jobs_write_the_same_bytes(tmp_path, local_ray):
    from jobs import caption, curate, encode, score, split

    videos = tmp_path / "in"
    make_samples(videos, size=(192, 108))
    a, b = tmp_path / "curate", tmp_path / "stages"
    local = ["--preset", "smoke", "--address", "local"]
    assert curate.cli(["--input", str(videos), "--output", str(a), "--no-report", *local]) == 0
    assert split.cli(["--input", str(videos), "--output", str(b), "--address", "local"]) == 0
    assert score.cli(["--input", str(b / "clips"), "--output", str(b / "scored"), *local]) == 0
    assert caption.cli(["--input", str(b / "scored"), "--output", str(b / "captions"), *local]) == 0
    assert encode.cli(["--input", str(b / "captions"), "--output", str(b / "latents"), *local]) == 0
    captions, shards = _digests(a / "captions", "part-*.parquet"), _digests(a / "latents", "shard-*.parquet")
    assert captions and shards
    assert captions == _digests(b / "captions", "part-*.parquet")
    assert shards == _digests(b / "latents", "shard-*.parquet")
