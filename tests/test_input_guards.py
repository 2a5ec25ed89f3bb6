"""Input folders are judged by their Parquet footers: a file that is not Parquet stops the job
with one line before Ray starts, not a pyarrow traceback."""

from __future__ import annotations

import sys

import pytest

from jobs.caption import cli as caption_cli
from jobs.encode import cli as encode_cli


@pytest.mark.parametrize("cli", [caption_cli, encode_cli])
def test_a_part_that_is_not_parquet_is_one_line_and_exit_2(tmp_path, capsys, cli):
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "part-00000.parquet").write_bytes(b"not parquet at all")
    assert cli(["--input", str(inp), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --input parts must be Parquet files")
    assert "part-00000.parquet" in err[0] and "remove the file" in err[0]
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
