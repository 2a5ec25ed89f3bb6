"""Every folder, file and marker path of a run, named once (README "Output layout and resume").

    OUT/
      videos/part-<source key>.parquet      probe rows, one per input (unreadable ones included)
      clips/part-<video_id>.parquet         split's clip records
      scored/part-*.parquet                 every clip with its scores and decisions
      scored/_funnel.json                   the filter cascade's funnel
      scored/_scores/part-<key>.parquet     jobs.score's score rows, before the join
      captions/part-<key>.parquet           kept clips with captions
      latents/shard-<key>-NNNNN.parquet     training shards
      latents/.manifest.json                how to read the shards, counts, checksums
      latents/_index/part-<key>.parquet     jobs.encode's status row of every clip it saw
      report/index.html                     the HTML report
      summary/<job>.json                    each job's closing summary
      _stats/<stage>/actor-*.json           per-actor timings
      _done/<stage>/<key>                   completion markers, every stage's under this one root
      _done/split-retract/<video_id>        a clip set a changed source stopped naming, until retracted

A stage job is given its own folder (`--output OUT/captions`); `run_root` is the OUT it belongs
to, where its markers live. Names starting with "_" or "." are skipped by folder readers
(pyarrow, Ray Data), so a stage folder reads as its parts only.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from curate.io.uri import PathLike, basename, join, parent

VIDEOS = "videos"
CLIPS = "clips"
SCORED = "scored"
CAPTIONS = "captions"
LATENTS = "latents"
REPORT = "report"
SUMMARY = "summary"
DONE = "_done"
STATS = "_stats"
SCORES = "_scores"  # inside scored/
INDEX = "_index"  # inside latents/
FUNNEL = "_funnel.json"  # inside scored/ (or any decided folder)
MANIFEST = ".manifest.json"  # inside latents/
PART_PREFIX = "part-"
SHARD_PREFIX = "shard-"
SUFFIX = ".parquet"

STAGE_FOLDERS = (VIDEOS, CLIPS, SCORED, CAPTIONS, LATENTS)


def folder(out: PathLike, name: str) -> str:
    """OUT/<name> (one of the names above)."""
    return join(out, name)


def run_root(stage_dir: PathLike) -> str:
    """The OUT a stage folder belongs to: OUT/captions -> OUT (its markers go to OUT/_done)."""
    return parent(stage_dir)


def part_key(clip_ids: Iterable[str], salt: str = "") -> str:
    """A part's key: one digest of the sorted clip ids it holds (and `salt`, e.g. a resume key,
    so parts of another config never reuse a name). The same clips give the same key anywhere."""
    text = salt + "\n" + "\n".join(sorted(clip_ids))
    return hashlib.blake2b(text.encode(), digest_size=10).hexdigest()


def part_name(key: str) -> str:
    return f"{PART_PREFIX}{key}{SUFFIX}"


def part_path(directory: PathLike, key: str) -> str:
    return join(directory, part_name(key))


def key_of(part: PathLike) -> str:
    """'abc' for '.../part-abc.parquet' (or '.../shard-abc.parquet')."""
    name = basename(part).removesuffix(SUFFIX)
    return name.removeprefix(PART_PREFIX)


def is_part(path: PathLike) -> bool:
    name = basename(path)
    return name.startswith(PART_PREFIX) and name.endswith(SUFFIX)


def shard_name(run_id: str, n: int) -> str:
    return f"{SHARD_PREFIX}{run_id}-{n:05d}{SUFFIX}"


def is_shard(path: PathLike) -> bool:
    name = basename(path)
    return name.startswith(SHARD_PREFIX) and name.endswith(SUFFIX)


def marker(out: PathLike, stage: str, key: str) -> str:
    """OUT/_done/<stage>/<key>: written after the output it vouches for."""
    return join(out, DONE, stage, key)


def markers_dir(out: PathLike, stage: str) -> str:
    return join(out, DONE, stage)


def manifest_path(latents_dir: PathLike) -> str:
    return join(latents_dir, MANIFEST)


def funnel_path(decided_dir: PathLike) -> str:
    return join(decided_dir, FUNNEL)


def scores_dir(scored_dir: PathLike) -> str:
    return join(scored_dir, SCORES)


def index_dir(latents_dir: PathLike) -> str:
    return join(latents_dir, INDEX)


def stats_dir(out: PathLike, stage: str) -> str:
    return join(out, STATS, stage)


def summary_path(out: PathLike, job: str) -> str:
    return join(out, SUMMARY, f"{job}.json")


def report_dir(out: PathLike) -> str:
    return join(out, REPORT)


# the relative paths a run may hold, as the map above draws them (a test walks a real run with it)
_ANY = r"[^/]+"
PATTERNS: dict[str, str] = {
    "video part": rf"{VIDEOS}/{PART_PREFIX}{_ANY}\{SUFFIX}",
    "clip part": rf"{CLIPS}/{PART_PREFIX}{_ANY}\{SUFFIX}",
    "scored part": rf"{SCORED}/{PART_PREFIX}{_ANY}\{SUFFIX}",
    "funnel": rf"{_ANY}/{re.escape(FUNNEL)}",
    "score rows": rf"{SCORED}/{SCORES}/{PART_PREFIX}{_ANY}\{SUFFIX}",
    "captions part": rf"{CAPTIONS}/{PART_PREFIX}{_ANY}\{SUFFIX}",
    "shard": rf"{LATENTS}/{SHARD_PREFIX}{_ANY}\{SUFFIX}",
    "manifest": rf"{LATENTS}/{re.escape(MANIFEST)}",
    "encode index": rf"{LATENTS}/{INDEX}/{PART_PREFIX}{_ANY}\{SUFFIX}",
    "report": rf"{REPORT}/.+",
    "summary": rf"{SUMMARY}/{_ANY}\.json",
    "stats": rf"{STATS}/{_ANY}/{_ANY}\.json",
    "marker": rf"{DONE}/{_ANY}/{_ANY}",
}


def kind_of(relpath: str) -> str | None:
    """Which entry of the layout a path relative to OUT is ('marker', 'shard', ...), or None."""
    for kind, pattern in PATTERNS.items():
        if re.fullmatch(pattern, relpath):
            return kind
    return None
