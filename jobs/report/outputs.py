"""What the stages left under OUT, as the report reads it (jobs/report/build.py fills it,
jobs/report/html.py draws it; kept apart so neither imports the other)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa


@dataclass
class RunOutputs:
    """What the stages left under OUT; None where a stage has not written anything."""

    out: Path
    videos: pa.Table | None = None
    clips: pa.Table | None = None
    scored: pa.Table | None = None
    funnel: dict[str, Any] | None = None
    captions: pa.Table | None = None
    manifest: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    def stages(self) -> dict[str, bool]:
        """Stage -> whether its output exists."""
        return {"split": self.videos is not None or self.clips is not None,
                "score + filter": self.scored is not None, "caption": self.captions is not None,
                "encode": self.manifest is not None}
