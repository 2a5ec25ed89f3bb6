"""What a folder holds, from Parquet footers: the checks that stop a mis-aimed command before Ray.

A stage's input is accepted for what its parts contain, not for the folder's name: the
caption job takes any folder whose rows carry decisions (`OUT/scored`, `OUT/filtered`, a
folder of your own), and a filter refuses clip rows without scores. Every part carries the
full schema (later groups null), so "holds" means "some row has a value": the footers'
null counts say so without reading a row. A folder of parts with no rows at all holds
nothing to misuse and passes.

An output must not be inside another stage's folder (`jobs.report --output OUT/scored`
would leave `OUT/scored/report/` where every folder reader of OUT/scored then fails), and
a stage writing parts refuses a folder that holds parts of another stage.

Cost: one listing per folder and up to SAMPLE_PARTS footers (one request each on object
storage), on the driver: metadata only.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from curate import schema as S
from curate.errors import io_line
from curate.io import storage
from jobs.runtime.flags import fail
from jobs.runtime.inputs import LIST_EXTENSIONS, VIDEO_EXTENSIONS
from jobs.runtime.parts import footer

SAMPLE_PARTS = 4  # footers read per folder: the first and last parts (a folder is written by one stage)
SCORE_VALUES = (S.MOTION, S.SHARPNESS, S.BRIGHTNESS, S.AESTHETIC, S.CLIP_EMBEDDING)


@dataclass(frozen=True)
class Holds:
    """What a folder's sampled parts hold."""

    parts: int
    rows: int
    filled: frozenset[str]  # columns with at least one value
    only_errors: bool  # every sampled row is status=error (no stage column could be filled)

    @property
    def level(self) -> str | None:
        """The last stage whose columns are filled: clips | scored | captions (None: no rows)."""
        if not self.rows:
            return None
        if S.CAPTION in self.filled:
            return "captions"
        if S.KEPT in self.filled or self.filled & set(SCORE_VALUES):
            return "scored"
        return "clips"


def holds(folder: str) -> Holds | None:
    """What `folder` holds (None: not a folder of part-*.parquet files)."""
    try:
        parts = storage.list_parts(folder) if storage.is_remote(folder) or os.path.isdir(folder) else []
    except (OSError, ValueError) as e:  # missing bucket, bad credentials, unreachable endpoint
        raise fail(
            "--input must be a readable folder of Parquet parts",
            f"{folder!r} ({io_line(e)})",
            "check the path, the bucket name, AWS_ENDPOINT_URL and the AWS_* credentials",
        ) from e
    if not parts:
        return None
    half = SAMPLE_PARTS // 2
    sample = parts if len(parts) <= SAMPLE_PARTS else parts[:half] + parts[-half:]
    rows, values = 0, {}
    statuses: set[str] = set()
    for p in sample:
        try:
            md = footer(p)
        except pa.ArrowInvalid as e:  # an empty or foreign file named part-*.parquet
            raise fail(
                "--input parts must be Parquet files written by tubelet",
                f"{p!r} ({io_line(e)})",
                "remove the file, or rerun the stage that writes this folder",
            ) from e
        rows += md.num_rows
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            for c in range(rg.num_columns):
                col = rg.column(c)
                name = col.path_in_schema.split(".", 1)[0]  # "clip_embedding.list.element" -> its column
                st = col.statistics
                n = rg.num_rows if st is None or not st.has_null_count else rg.num_rows - st.null_count
                if name == S.STATUS and st is not None and st.has_min_max:
                    statuses |= {st.min, st.max}
                values[name] = values.get(name, 0) + (n if st is not None else rg.num_rows)
    filled = frozenset(k for k, v in values.items() if v > 0)
    return Holds(parts=len(parts), rows=rows, filled=filled, only_errors=statuses == {S.STATUS_ERROR})


# what each stage's input must hold:
# (columns of which one must have a value, what they are, made by, typical folder)
NEEDS: dict[str, tuple[tuple[str, ...], str, str, str]] = {
    "score": ((S.CLIP_ID,), "clip rows", "jobs.split", "OUT/clips"),
    "filter": (SCORE_VALUES, "score columns (motion, sharpness, aesthetic, ...)", "jobs.score", "OUT/scored"),
    "caption": ((S.KEPT,), "decision columns (kept, drop_reason)", "jobs.score or jobs.filter", "OUT/scored"),
    "encode": ((S.CAPTION,), "captions", "jobs.caption", "OUT/captions"),
}
# a stage that writes parts: what its own output holds once written (a rerun's output passes)
PRODUCES = {"score": "scored", "filter": "scored", "caption": "captions"}
OUTPUT_NAME = {"score": "scored", "filter": "filtered", "caption": "captions", "encode": "latents"}


def check_input(stage: str, folder: str, flag: str = "--input") -> Holds:
    """`folder` must hold what `stage` reads; exit 2 (UsageError) naming what is missing and who writes it."""
    cols, what, made_by, typical = NEEDS[stage]
    h = holds(folder)
    if h is None:
        raise fail(
            f"{flag} must be a folder of Parquet parts written by {made_by} ({typical})",
            f"{folder!r} (no Parquet parts)",
            f"run python -m {made_by} first or pass {typical}",
        )
    if h.rows and not h.only_errors and not (h.filled & set(cols)):
        raise fail(
            f"{flag} must hold {what} (written by {made_by})",
            f"{folder!r} ({h.level} rows without them)",
            f"pass {typical} or run {made_by} first",
        )
    if stage == "score" and h.level in ("scored", "captions"):
        raise fail(
            f"{flag} must hold clips to score (written by jobs.split, OUT/clips)",
            f"{folder!r} ({h.level} rows: already scored)",
            "pass OUT/clips",
        )
    return h


def _parts_in(folder: str) -> bool:
    try:
        return (
            bool(storage.list_parts(folder)) if storage.is_remote(folder) or os.path.isdir(folder) else False
        )
    except (OSError, ValueError):
        return False  # unreadable here: the writability check names the problem


def check_output(
    folder: str,
    *,
    stage: str | None = None,
    same_as: str | None = None,
    flag: str = "--output",
    depth: int = 2,
) -> None:
    """`folder` must not be inside a stage's folder; with `stage`, parts already in it must be
    that stage's (a rerun) unless it is the input (`same_as`: in place); without, it must hold none.
    """
    here = folder.rstrip("/")
    up = here
    for _ in range(depth):
        nxt = storage.parent(up).rstrip("/")
        if not nxt or nxt == up:
            break
        up = nxt
        if _parts_in(up):
            raise fail(
                f"{flag} must not be inside another stage's folder",
                f"{folder!r} ({up} holds Parquet parts)",
                f"pass a folder beside it, e.g. {storage.join(storage.parent(up), storage.basename(here))}",
            )
    if same_as is not None and here == same_as.rstrip("/"):
        return
    if not _parts_in(here):
        return
    if stage is None:
        raise fail(
            f"{flag} must be a run folder (OUT), not a stage's folder",
            f"{folder!r} (it holds Parquet parts)",
            f"pass its parent, {storage.parent(here)}",
        )
    h = holds(here)
    want = PRODUCES.get(stage)  # None: the stage writes no part-*.parquet (encode writes shards)
    if h is not None and h.level not in (None, want):
        raise fail(
            f"{flag} must be a new folder or one jobs.{stage} wrote",
            f"{folder!r} (it holds {h.level} parts)",
            f"pass another folder, e.g. {storage.join(storage.parent(here), OUTPUT_NAME.get(stage, stage))}",
        )


def check_run_folder(out: str, flag: str = "--output") -> list[str]:
    """A run root OUT with at least one stage's output in it; returns the stage folders found."""
    check_output(out, flag=flag)
    found = [name for name in ("videos", "clips", "scored", "captions") if _parts_in(storage.join(out, name))]
    if storage.exists(storage.join(out, "latents")) and storage.list_files(
        storage.join(out, "latents"), ".parquet"
    ):
        found.append("latents")
    if not found:
        raise fail(
            f"{flag} must be a run folder with some stage's output (OUT/clips, OUT/scored, ...)",
            f"{out!r} (no stage output in it)",
            "run jobs.split (or jobs.curate) into it first",
        )
    return found


def check_outside_input(inp: str, out: str) -> None:
    """`--output` must not be inside the `--input` folder (or prefix, or a glob's folder): the next
    run would search it and take the run's own files (samples, report previews) for inputs."""
    root = inp
    if glob.has_magic(inp):  # the folder the glob searches: its path before the first wildcard
        first = min(i for i, ch in enumerate(inp) if ch in "*?[")
        root = inp[:first].rsplit("/", 1)[0] if "/" in inp[:first] else "."
    elif Path(inp).suffix.lower() in VIDEO_EXTENSIONS | LIST_EXTENSIONS:
        return  # one video or a list file: nothing is searched
    elif not storage.is_remote(inp) and not os.path.isdir(inp):
        return  # not found: the input check names it
    r, o = root.rstrip("/"), out.rstrip("/")
    if o == r or o.startswith(r + "/"):
        raise fail(
            "--output must not be inside --input (a rerun would search the run's own files as inputs)",
            f"{out!r} (inside {inp!r})",
            f"pass a folder beside it, e.g. {storage.join(storage.parent(r), 'out')}",
        )
