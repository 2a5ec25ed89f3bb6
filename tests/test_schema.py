import pyarrow as pa
import pytest

from curate import schema as S
from curate.ids import clip_id, video_id_of_file


def _ok_row(**over):
    row = {
        S.CLIP_ID: clip_id("v" * 32, 0, 48),
        S.VIDEO_ID: "v" * 32,
        S.SOURCE_URI: "/x.mp4",
        S.START_FRAME: 0,
        S.END_FRAME: 48,
        S.START_PTS: 0.0,
        S.END_PTS: 2.0,
        S.FPS: 24.0,
        S.WIDTH: 320,
        S.HEIGHT: 180,
        S.SHOT_INDEX: 0,
        S.SPLIT_METHOD: "content",
        S.TRANSITION_BEFORE: "start",
        S.STATUS: S.STATUS_OK,
        S.CONFIG_HASH: "h",
        S.TUBELET_VERSION: "0",
    }
    row.update(over)
    return row


def test_valid_split_table_passes_and_later_stage_fails():
    t = S.table_from_rows([_ok_row()])
    S.validate(t, upto="split")
    with pytest.raises(S.SchemaError, match="motion"):
        S.validate(t, upto="score")


def test_unknown_column_is_rejected():
    with pytest.raises(S.SchemaError, match="unknown columns"):
        S.table_from_rows([_ok_row(bogus=1)])


def test_validate_reports_missing_wrong_type_and_nulls():
    t = S.table_from_rows([_ok_row()])
    with pytest.raises(S.SchemaError, match="missing"):
        S.validate(t.drop_columns([S.FPS]))
    bad_type = t.set_column(t.schema.get_field_index(S.WIDTH), S.WIDTH, pa.array([320.0]))
    with pytest.raises(S.SchemaError, match="must be int32"):
        S.validate(bad_type)
    with pytest.raises(S.SchemaError, match="null on 1 ok row"):
        S.validate(S.table_from_rows([_ok_row(**{S.FPS: None})]))
    with pytest.raises(S.SchemaError, match="start_frame < end_frame"):
        S.validate(S.table_from_rows([_ok_row(**{S.END_FRAME: 0})]))


def test_error_rows_need_a_reason_but_no_identity():
    err = {
        S.CLIP_ID: "v-error-probe",
        S.VIDEO_ID: "v",
        S.SOURCE_URI: "/bad.mp4",
        S.STATUS: S.STATUS_ERROR,
        S.FAILED_STAGE: "probe",
        S.ERROR: "empty file (0 bytes)",
        S.CONFIG_HASH: "h",
        S.TUBELET_VERSION: "0",
    }
    S.validate(S.table_from_rows([err, _ok_row()]))
    with pytest.raises(S.SchemaError, match="failed_stage"):
        S.validate(S.table_from_rows([{**err, S.ERROR: None}]))


def test_conform_fills_later_groups_with_nulls():
    t = pa.table({S.CLIP_ID: ["a"], S.STATUS: ["ok"]})
    full = S.conform(t)
    assert full.schema.equals(S.CLIP_SCHEMA, check_metadata=False)
    assert full.column(S.CAPTION).null_count == 1


def test_ids_are_content_addressed(tmp_path):
    a = tmp_path / "a.mp4"
    a.write_bytes(b"abc" * 1000)
    b = tmp_path / "renamed copy.mkv"
    b.write_bytes(a.read_bytes())
    c = tmp_path / "c.mp4"
    c.write_bytes(b"abc" * 999 + b"abd")
    assert video_id_of_file(a) == video_id_of_file(b)
    assert video_id_of_file(a) != video_id_of_file(c)
    assert clip_id("v", 0, 10) != clip_id("v", 0, 11)
