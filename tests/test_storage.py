"""curate.io.storage / curate.io.uri on local disk and on a real S3 API server (moto, 127.0.0.1)."""

from __future__ import annotations

import io
import os
import pickle
import stat
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from curate.errors import UsageError
from curate.io import storage as st


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_join_keeps_local_local_and_uris_uris(tmp_path):
    assert st.join(str(tmp_path), "a", "b.parquet") == str(tmp_path / "a" / "b.parquet")
    assert st.join(tmp_path, "a") == str(tmp_path / "a")  # a Path is accepted
    assert st.join("s3://bkt/out/", "clips", "/part-1.parquet") == "s3://bkt/out/clips/part-1.parquet"
    assert st.join("s3://bkt/lists", "../raw/v.mp4") == "s3://bkt/raw/v.mp4"
    assert (
        st.is_remote("s3://bkt/x") and not st.is_remote(str(tmp_path)) and not st.is_remote("file:///tmp/x")
    )
    assert (
        st.parent("s3://bkt/out/a.json") == "s3://bkt/out" and st.basename("s3://bkt/out/a.json") == "a.json"
    )
    fs, path = st.filesystem(str(tmp_path / "x"))
    assert fs.type_name == "local" and path == str(tmp_path / "x")


@pytest.mark.parametrize("umask,want", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_files_follow_the_umask(tmp_path, umask, want):
    old = os.umask(umask)
    try:
        part = st.write_parquet_atomic(pa.table({"x": [1, 2]}), tmp_path / "p" / "part-0.parquet")
        js = st.write_json_atomic({"a": 1}, tmp_path / "s.json")
        st.mark_done(tmp_path, "stage", "key", "h")
        marker = st.marker_path(tmp_path, "stage", "key")
    finally:
        os.umask(old)
    assert [_mode(p) for p in (part, js, marker)] == [want] * 3


def test_markers_parts_and_listing(tmp_path):
    out = str(tmp_path)
    assert not st.is_done(out, "split", "v1", "h1")
    st.mark_done(out, "split", "v1", "h1", clips=3)
    assert st.is_done(out, "split", "v1", "h1") and not st.is_done(out, "split", "v1", "other")
    for i in range(2):
        st.write_parquet_atomic(pa.table({"x": [i]}), st.join(out, "clips", f"part-{i}.parquet"))
    (tmp_path / "clips" / ".part-9.parquet.abc.tmp").write_bytes(b"partial")
    (tmp_path / "clips" / "_funnel.json").write_text("{}")
    assert [os.path.basename(p) for p in st.list_files(st.join(out, "clips"), ".parquet")] == [
        "part-0.parquet",
        "part-1.parquet",
    ]
    assert st.read_parts(st.join(out, "clips")).column("x").to_pylist() == [0, 1]
    assert st.list_files(st.join(out, "nothing-here")) == []


def test_a_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "part.parquet"
    with pytest.raises(RuntimeError), st.atomic_output(target) as tmp:
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_local_copy_of_a_local_file_is_the_file(tmp_path):
    p = tmp_path / "v.mp4"
    p.write_bytes(b"abc")
    with st.local_copy(str(p)) as local:
        assert local == str(p)
    assert p.exists()


# --- object storage ------------------------------------------------------------------------


def test_s3_round_trip(s3):
    s3.make_bucket("rt-bucket")
    out = "s3://rt-bucket/out"
    st.check_writable(out)
    t = pa.table({"x": [1, 2, 3]})
    st.write_parquet_atomic(t, st.join(out, "clips", "part-a.parquet"))
    st.mark_done(out, "split", "a", "h")
    assert st.is_done(out, "split", "a", "h") and st.exists(st.join(out, "clips", "part-a.parquet"))
    assert st.list_files(st.join(out, "clips"), ".parquet") == ["s3://rt-bucket/out/clips/part-a.parquet"]
    assert st.read_parts(st.join(out, "clips")).equals(t)
    st.write_bytes_atomic(b"video-bytes", st.join(out, "raw", "v.mp4"))
    with st.local_copy(st.join(out, "raw", "v.mp4")) as local:
        assert local.endswith(".mp4") and Path(local).read_bytes() == b"video-bytes"
    assert not os.path.exists(local)  # the worker-local copy is always removed
    with pytest.raises(KeyError), st.local_copy(st.join(out, "raw", "v.mp4")) as local:
        raise KeyError("decoder failed")
    assert not os.path.exists(local)
    st.delete(st.join(out, "raw", "v.mp4"))
    assert not st.exists(st.join(out, "raw", "v.mp4"))
    assert st.storage_options(out)["endpoint_url"] == s3.endpoint and st.storage_options("/tmp") == {}


class _FailsOnSecondRead(io.RawIOBase):
    """A 40 MiB source whose second read fails (a full disk, a dead worker): the upload stops after
    its first multipart part."""

    def __init__(self, on_fail):
        self.reads, self.on_fail = 0, on_fail

    def read(self, n=-1):
        self.reads += 1
        if self.reads == 2:
            self.on_fail()
            raise OSError("injected: the source died mid-upload")
        return b"x" * n


def test_an_upload_failing_mid_way_leaves_no_object_and_no_parts(s3, tmp_path):
    c = s3.client()
    bucket = s3.make_bucket("abort-bucket")
    uri = st.join(bucket, "out", "latents", "shard-a-00000.parquet")
    started: list = []  # the multipart upload in flight when the failure comes
    src = _FailsOnSecondRead(
        lambda: started.extend(c.list_multipart_uploads(Bucket="abort-bucket").get("Uploads", []))
    )
    with pytest.raises(OSError, match="injected"):
        st._upload_stream(src, uri)
    assert len(started) == 1  # the first 16 MiB part was sent
    assert not st.exists(uri)  # not a 16 MiB object at the final key
    assert not c.list_multipart_uploads(Bucket="abort-bucket").get("Uploads")  # aborted, not left to bill
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(1 << 20) * 20)  # 20 MiB: two parts
    st.publish_copy(str(local), uri)
    assert st.read_bytes(uri) == local.read_bytes()


def test_s3_filesystem_pickles_without_secrets(s3):
    fs, _ = st.filesystem("s3://any-bucket/x")
    blob = pickle.dumps(fs)
    assert all(secret.encode() not in blob for secret in s3.secrets())


def test_s3_bad_bucket_and_credentials_are_one_line_usage_errors(s3, monkeypatch):
    with pytest.raises(UsageError) as e:
        st.check_writable("s3://no-such-bucket-14/out")
    assert "NO_SUCH_BUCKET" in str(e.value) and "\n" not in str(e.value)
    s3.make_bucket("cred-bucket")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(UsageError) as e:
        st.check_writable("s3://cred-bucket/out")
    msg = str(e.value)
    assert "SIGNATURE" in msg and "not-the-secret" not in msg and s3.access_key not in msg


def test_latent_dataset_reads_shards_from_s3_like_local(s3, tmp_path):
    from jobs.bench.shards import make_shards
    from latents.dataset import LatentDataset
    from latents.shards import MANIFEST_NAME

    make_shards(
        tmp_path,
        rows=30,
        latent_shapes=[(2, 1, 3, 4), (2, 1, 4, 3)],
        text_tokens=4,
        text_dim=8,
        rows_per_shard=16,
    )
    s3.make_bucket("shards-bucket")
    uploaded = s3.upload_dir(tmp_path, "s3://shards-bucket/out/latents", "*.parquet")
    s3.upload_dir(tmp_path, "s3://shards-bucket/out/latents", MANIFEST_NAME)
    assert len(uploaded) == 2
    local = {s["clip_id"]: s["latent"] for s in LatentDataset(tmp_path, seed=4)}
    remote = {
        s["clip_id"]: s["latent"]
        for s in LatentDataset("s3://shards-bucket/out/latents", seed=4, verify="checksum")
    }
    assert local.keys() == remote.keys() and len(local) == 30
    assert all(torch.equal(local[k], remote[k]) for k in local)
