"""THE Arrow schema of a clip record (README, "The clip record") and of a probed video.

Every table tubelet writes has the full clip schema: a stage fills its own column group
and leaves later groups null. Stages import the column-name constants below; a column
name never appears as a free string elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa

SCHEMA_VERSION = "1.2"  # 1.1: text/flow/camera/NSFW scores, caption_clip_score; 1.2: caption token usage

# --- identity (split) ------------------------------------------------------------------
CLIP_ID = "clip_id"
VIDEO_ID = "video_id"
SOURCE_URI = "source_uri"
START_FRAME = "start_frame"
END_FRAME = "end_frame"  # exclusive
START_PTS = "start_pts"  # seconds
END_PTS = "end_pts"  # seconds, exclusive (pts of end_frame, or end of stream)
FPS = "fps"  # frames in the span / seconds in the span (correct for VFR)
WIDTH = "width"  # display width, after rotation and sample aspect ratio
HEIGHT = "height"

# --- split ------------------------------------------------------------------------------
SHOT_INDEX = "shot_index"
SPLIT_METHOD = "split_method"
TRANSITION_BEFORE = "transition_before"  # start | cut | fade_in | fade_out | dissolve | wipe | black | window
BOUNDARY_SCORE_START = "boundary_score_start"  # detector's transition score at the clip's first boundary
BOUNDARY_SCORE_END = "boundary_score_end"

# --- score ------------------------------------------------------------------------------
AESTHETIC = "aesthetic"
CLIP_EMBEDDING = "clip_embedding"
MOTION = "motion"
SHARPNESS = "sharpness"
BRIGHTNESS = "brightness"
BLACK_FRACTION = "black_fraction"
IS_STATIC = "is_static"
TEXT_AREA = "text_area"  # share of the frame covered by OCR text boxes, max over the OCR frames
TEXT_BOXES = "text_boxes"  # OCR text boxes in the frame with the most, i32
OCR_TEXT = "ocr_text"  # recognised strings, deduplicated and capped, list<str>
FLOW_MAGNITUDE = "flow_magnitude"  # mean dense optical flow, short sides per second
CAMERA_MOTION = (
    "camera_motion"  # static | pan_left | pan_right | tilt_up | tilt_down | zoom_in | zoom_out | complex
)
NSFW = "nsfw"  # highest exposed-body-part detector confidence over the frames, 0..1
DUPLICATE_OF = "duplicate_of"

# --- decision ---------------------------------------------------------------------------
KEPT = "kept"
# transport columns a later stage's frames travel in when they were decoded ahead (jobs.curate
# decodes a kept clip once for caption and encode): stages before it pass them through untouched
AHEAD_PREFIX = "_ahead_"
DROP_REASON = "drop_reason"
DROP_RULE = (
    "drop_rule"  # the rule name alone (e.g. "aesthetic", "status", "near_duplicate"), for value_counts
)

# --- caption ----------------------------------------------------------------------------
CAPTION = "caption"
CAPTION_SHORT = "caption_short"
CAPTION_MODEL = "caption_model"
PROMPT_VERSION = "prompt_version"
CAPTION_QA = "caption_qa"
CAPTION_CLIP_SCORE = "caption_clip_score"  # cosine of the caption's CLIP text embedding and clip_embedding
# tokens the engine reported for all of a clip's caption requests (dense tries + short caption);
# the split per request is in caption_qa["tokens"]
CAPTION_PROMPT_TOKENS = "caption_prompt_tokens"
CAPTION_COMPLETION_TOKENS = "caption_completion_tokens"

# --- latent -----------------------------------------------------------------------------
LATENT = "latent"
LATENT_SHAPE = "latent_shape"  # [C, T, H, W]
LATENT_DTYPE = "latent_dtype"
VAE_ID = "vae_id"
PIXEL_FRAMES = "pixel_frames"
PIXEL_HEIGHT = "pixel_height"
PIXEL_WIDTH = "pixel_width"
SAMPLE_FPS = "sample_fps"
TEXT_EMBEDDING = "text_embedding"
TEXT_EMBEDDING_SHAPE = "text_embedding_shape"
TEXT_EMBEDDING_DTYPE = "text_embedding_dtype"

# --- status -----------------------------------------------------------------------------
STATUS = "status"
ERROR = "error"
FAILED_STAGE = "failed_stage"

# --- provenance -------------------------------------------------------------------------
CONFIG_HASH = "config_hash"
TUBELET_VERSION = "tubelet_version"

STATUS_OK = "ok"
STATUS_ERROR = "error"

Stage = Literal["split", "score", "filter", "caption", "encode"]
STAGES: tuple[Stage, ...] = ("split", "score", "filter", "caption", "encode")


@dataclass(frozen=True)
class ColumnGroup:
    name: str
    written_by: str
    fields: tuple[pa.Field, ...]
    # columns that must be non-null on every status=ok row once the group's stage ran
    required: tuple[str, ...]


def _f(name: str, typ: pa.DataType) -> pa.Field:
    return pa.field(name, typ, nullable=True)


IDENTITY = ColumnGroup(
    "identity",
    "split",
    (
        _f(CLIP_ID, pa.string()),
        _f(VIDEO_ID, pa.string()),
        _f(SOURCE_URI, pa.string()),
        _f(START_FRAME, pa.int64()),
        _f(END_FRAME, pa.int64()),
        _f(START_PTS, pa.float64()),
        _f(END_PTS, pa.float64()),
        _f(FPS, pa.float64()),
        _f(WIDTH, pa.int32()),
        _f(HEIGHT, pa.int32()),
    ),
    (CLIP_ID, VIDEO_ID, SOURCE_URI, START_FRAME, END_FRAME, START_PTS, END_PTS, FPS, WIDTH, HEIGHT),
)
SPLIT = ColumnGroup(
    "split",
    "split",
    (
        _f(SHOT_INDEX, pa.int32()),
        _f(SPLIT_METHOD, pa.string()),
        _f(TRANSITION_BEFORE, pa.string()),
        _f(BOUNDARY_SCORE_START, pa.float32()),
        _f(BOUNDARY_SCORE_END, pa.float32()),
    ),
    (SHOT_INDEX, SPLIT_METHOD, TRANSITION_BEFORE),
)
SCORE = ColumnGroup(
    "score",
    "score",
    (
        _f(AESTHETIC, pa.float32()),
        _f(CLIP_EMBEDDING, pa.list_(pa.float16())),
        _f(MOTION, pa.float32()),
        _f(SHARPNESS, pa.float32()),
        _f(BRIGHTNESS, pa.float32()),
        _f(BLACK_FRACTION, pa.float32()),
        _f(IS_STATIC, pa.bool_()),
        _f(TEXT_AREA, pa.float32()),
        _f(TEXT_BOXES, pa.int32()),
        _f(OCR_TEXT, pa.list_(pa.string())),
        _f(FLOW_MAGNITUDE, pa.float32()),
        _f(CAMERA_MOTION, pa.string()),
        _f(NSFW, pa.float32()),
        _f(DUPLICATE_OF, pa.string()),
    ),
    (MOTION, SHARPNESS, BRIGHTNESS),
)
DECISION = ColumnGroup(
    "decision",
    "filter",
    (_f(KEPT, pa.bool_()), _f(DROP_REASON, pa.string()), _f(DROP_RULE, pa.string())),
    (KEPT,),
)
CAPTION_GROUP = ColumnGroup(
    "caption",
    "caption",
    (
        _f(CAPTION, pa.string()),
        _f(CAPTION_SHORT, pa.string()),
        _f(CAPTION_MODEL, pa.string()),
        _f(PROMPT_VERSION, pa.string()),
        _f(CAPTION_QA, pa.string()),
        _f(CAPTION_CLIP_SCORE, pa.float32()),
        _f(CAPTION_PROMPT_TOKENS, pa.int32()),
        _f(CAPTION_COMPLETION_TOKENS, pa.int32()),
    ),
    # caption_short may be null: a short caption that failed is left out (caption_qa says why)
    (CAPTION, CAPTION_MODEL, PROMPT_VERSION),
)
LATENT_GROUP = ColumnGroup(
    "latent",
    "encode",
    (
        _f(LATENT, pa.binary()),
        _f(LATENT_SHAPE, pa.list_(pa.int32())),
        _f(LATENT_DTYPE, pa.string()),
        _f(VAE_ID, pa.string()),
        _f(PIXEL_FRAMES, pa.int32()),
        _f(PIXEL_HEIGHT, pa.int32()),
        _f(PIXEL_WIDTH, pa.int32()),
        _f(SAMPLE_FPS, pa.float32()),
        _f(TEXT_EMBEDDING, pa.binary()),
        _f(TEXT_EMBEDDING_SHAPE, pa.list_(pa.int32())),
        _f(TEXT_EMBEDDING_DTYPE, pa.string()),
    ),
    (LATENT, LATENT_SHAPE, LATENT_DTYPE, VAE_ID, PIXEL_FRAMES, PIXEL_HEIGHT, PIXEL_WIDTH, SAMPLE_FPS),
)
STATUS_GROUP = ColumnGroup(
    "status",
    "any",
    (_f(STATUS, pa.string()), _f(ERROR, pa.string()), _f(FAILED_STAGE, pa.string())),
    (STATUS,),
)
PROVENANCE = ColumnGroup(
    "provenance",
    "every",
    (_f(CONFIG_HASH, pa.string()), _f(TUBELET_VERSION, pa.string())),
    (CONFIG_HASH, TUBELET_VERSION),
)

GROUPS: tuple[ColumnGroup, ...] = (
    IDENTITY,
    SPLIT,
    SCORE,
    DECISION,
    CAPTION_GROUP,
    LATENT_GROUP,
    STATUS_GROUP,
    PROVENANCE,
)

# Which groups each stage has filled once it ran (cumulative).
_GROUPS_UPTO: dict[str, tuple[ColumnGroup, ...]] = {
    "split": (IDENTITY, SPLIT, STATUS_GROUP, PROVENANCE),
    "score": (IDENTITY, SPLIT, SCORE, STATUS_GROUP, PROVENANCE),
    "filter": (IDENTITY, SPLIT, SCORE, DECISION, STATUS_GROUP, PROVENANCE),
    "caption": (IDENTITY, SPLIT, SCORE, DECISION, CAPTION_GROUP, STATUS_GROUP, PROVENANCE),
    "encode": GROUPS,
}

CLIP_SCHEMA = pa.schema(
    [f for g in GROUPS for f in g.fields],
    metadata={b"tubelet.schema_version": SCHEMA_VERSION.encode()},
)

# --- the videos table (probe results, one row per source, incl. unreadable ones) ---------
CONTAINER = "container"
VIDEO_CODEC = "video_codec"
CODED_WIDTH = "coded_width"
CODED_HEIGHT = "coded_height"
ROTATION = "rotation"  # degrees, as the display matrix says (counter-clockwise)
SAR = "sar"  # "num:den"
FPS_AVG = "fps_avg"
FPS_NOMINAL = "fps_nominal"
IS_VFR = "is_vfr"
DURATION = "duration"  # seconds
FRAME_COUNT = "frame_count"  # decoded frames (filled by the split pass, which decodes every frame)
PACKET_COUNT = "packet_count"  # demuxed video packets (cheap; what probe alone can count)
HAS_AUDIO = "has_audio"
AUDIO_CODEC = "audio_codec"
SIZE_BYTES = "size_bytes"
NUM_CLIPS = "num_clips"

VIDEO_SCHEMA = pa.schema(
    [
        _f(VIDEO_ID, pa.string()),
        _f(SOURCE_URI, pa.string()),
        _f(SIZE_BYTES, pa.int64()),
        _f(CONTAINER, pa.string()),
        _f(VIDEO_CODEC, pa.string()),
        _f(CODED_WIDTH, pa.int32()),
        _f(CODED_HEIGHT, pa.int32()),
        _f(WIDTH, pa.int32()),
        _f(HEIGHT, pa.int32()),
        _f(ROTATION, pa.int32()),
        _f(SAR, pa.string()),
        _f(FPS_AVG, pa.float64()),
        _f(FPS_NOMINAL, pa.float64()),
        _f(IS_VFR, pa.bool_()),
        _f(DURATION, pa.float64()),
        _f(PACKET_COUNT, pa.int64()),
        _f(FRAME_COUNT, pa.int64()),
        _f(HAS_AUDIO, pa.bool_()),
        _f(AUDIO_CODEC, pa.string()),
        _f(NUM_CLIPS, pa.int32()),
        _f(STATUS, pa.string()),
        _f(ERROR, pa.string()),
        _f(FAILED_STAGE, pa.string()),
        _f(CONFIG_HASH, pa.string()),
        _f(TUBELET_VERSION, pa.string()),
    ],
    metadata={b"tubelet.schema_version": SCHEMA_VERSION.encode()},
)


class SchemaError(ValueError):
    """A table does not match the clip-record contract."""


def table_from_rows(rows: Sequence[Mapping[str, Any]], schema: pa.Schema = CLIP_SCHEMA) -> pa.Table:
    """Rows (dicts with any subset of the schema's columns) -> a table of the full schema."""
    unknown = {k for r in rows for k in r} - set(schema.names)
    if unknown:
        raise SchemaError(f"unknown columns {sorted(unknown)}: add them to curate/schema.py first")
    cols = {name: [r.get(name) for r in rows] for name in schema.names}
    return pa.table(cols, schema=schema)


def empty_table(schema: pa.Schema = CLIP_SCHEMA) -> pa.Table:
    return schema.empty_table()


def conform(table: pa.Table, schema: pa.Schema = CLIP_SCHEMA) -> pa.Table:
    """Add missing columns as nulls, cast to the schema's types and order."""
    n = table.num_rows
    arrays = []
    for field in schema:
        if field.name in table.column_names:
            arrays.append(table.column(field.name).cast(field.type))
        else:
            arrays.append(pa.nulls(n, field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def set_columns(table: pa.Table, values: Mapping[str, Iterable[Any]]) -> pa.Table:
    """Replace (or fill) whole columns of a full-schema table, keeping the schema's types."""
    for name, col in values.items():
        idx = table.schema.get_field_index(name)
        if idx < 0:
            raise SchemaError(f"unknown column {name!r}: add it to curate/schema.py first")
        field = table.schema.field(idx)
        arr = col if isinstance(col, pa.Array | pa.ChunkedArray) else pa.array(list(col), type=field.type)
        table = table.set_column(idx, field, arr.cast(field.type))
    return table


def validate(table: pa.Table, upto: Stage = "split", schema: pa.Schema = CLIP_SCHEMA) -> None:
    """Check a clip table against the contract, up to (and including) `upto`'s groups.

    Raises SchemaError naming the column, the rule, and what was seen.
    """
    if upto not in _GROUPS_UPTO:
        raise SchemaError(f"upto must be one of {list(_GROUPS_UPTO)}, got {upto!r}")
    for field in schema:
        if field.name not in table.column_names:
            raise SchemaError(
                f"column {field.name!r} is missing; tables carry the full schema (use conform())"
            )
        seen = table.schema.field(field.name).type
        if seen != field.type:
            raise SchemaError(f"column {field.name!r} must be {field.type}, got {seen}")
    status = table.column(STATUS).to_pylist()
    if any(s not in (STATUS_OK, STATUS_ERROR) for s in status):
        raise SchemaError(f"status must be 'ok' or 'error', got {sorted({str(s) for s in status})}")
    ok = [s == STATUS_OK for s in status]
    for group in _GROUPS_UPTO[upto]:
        for name in group.required:
            # Later groups may be null on dropped clips (a dropped clip is never captioned).
            col = table.column(name).to_pylist()
            need = ok
            if group in (CAPTION_GROUP, LATENT_GROUP):
                kept = table.column(KEPT).to_pylist()
                need = [o and bool(k) for o, k in zip(ok, kept)]
            missing = [i for i, (v, n) in enumerate(zip(col, need)) if n and v is None]
            if missing:
                raise SchemaError(
                    f"column {name!r} ({group.name} group, written by {group.written_by}) is null on "
                    f"{len(missing)} ok row(s), first at row {missing[0]}; "
                    f"run the {group.written_by} stage first"
                )
    err = [i for i, s in enumerate(status) if s == STATUS_ERROR]
    for i in err:
        if not table.column(FAILED_STAGE)[i].as_py() or not table.column(ERROR)[i].as_py():
            raise SchemaError(f"error row {i} must name failed_stage and a one-line error")
    if STATUS_OK in status:
        starts = table.column(START_FRAME).to_pylist()
        ends = table.column(END_FRAME).to_pylist()
        bad = [i for i, (o, s, e) in enumerate(zip(ok, starts, ends)) if o and not (0 <= s < e)]
        if bad:
            raise SchemaError(
                f"row {bad[0]}: need 0 <= start_frame < end_frame, got {starts[bad[0]]}, {ends[bad[0]]}"
            )


def columns_of(group: ColumnGroup) -> list[str]:
    return [f.name for f in group.fields]
