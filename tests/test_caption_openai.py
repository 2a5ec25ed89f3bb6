"""The openai caption engine against a real server: `transformers serve` with the smoke VLM.

A session fixture saves the smoke Qwen2.5-VL to a temp folder and serves it on a free
127.0.0.1 port (jobs/bench/openai_server.py: transformers serve plus an API key check).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest

from captioner.openai_engine import OpenAIConfig
from captioner.stage import SMOKE, CaptionStage, resolve_engine
from captioner.vlm import build_smoke_vlm
from curate import schema as S
from curate.errors import UsageError
from curate.io.storage import read_parts, write_parquet_atomic
from jobs.bench import openai_server
from jobs.bench.openai_server import LocalServer
from tests.caption_helpers import make_clips

REPO = Path(__file__).resolve().parent.parent
KEY_ENV = "TUBELET_TEST_CAPTION_KEY"
KEY = "sk-test-7f3a9c2e51d84b06"


def start_server(model_dir: Path, log: Path) -> LocalServer:
    return openai_server.start_server(model_dir, log, KEY_ENV, KEY)


@pytest.fixture(scope="session")
def smoke_dir(tmp_path_factory) -> Path:
    return build_smoke_vlm(tmp_path_factory.mktemp("served") / "smoke-vlm")


@pytest.fixture(scope="session")
def server(smoke_dir, tmp_path_factory):
    srv = start_server(smoke_dir, tmp_path_factory.mktemp("serve-log") / "serve.log")
    yield srv.url
    srv.stop()


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def _cfg(url: str, model: str, **kw) -> object:
    return replace(
        SMOKE,
        engine="openai",
        model=model,
        clip_model=None,
        batch_size=8,
        openai=OpenAIConfig(base_url=url, api_key_env=KEY_ENV, max_in_flight=4, backoff_s=0.1, **kw),
    )


def test_stage_captions_through_the_server_with_usage(tmp_path, server, smoke_dir, key_env):
    _, rows = make_clips(tmp_path, [(0, 10), (12, 30), (40, 47), (50, 70), (72, 90)])
    cfg = resolve_engine(_cfg(server, str(smoke_dir)))
    assert cfg.openai.frames == "images"  # transformers serve's video_url needs torchcodec
    stage = CaptionStage(cfg)
    out = stage(S.table_from_rows(rows)).to_pylist()
    ok = [r for r in out if r[S.STATUS] == S.STATUS_OK]
    # the random model's text loops now and then: QA fails it twice -> an error row, never an empty caption
    assert ok and all(r[S.CAPTION] for r in ok)
    assert all(r[S.FAILED_STAGE] == "caption" and "QA failed twice" in r[S.ERROR] for r in out if r not in ok)
    assert {r[S.CAPTION_MODEL] for r in out} == {f"openai:{smoke_dir}:image_url"}
    # usage from the server: 8 frames as images make a longer prompt than the text alone
    assert all(r[S.CAPTION_PROMPT_TOKENS] > 100 and r[S.CAPTION_COMPLETION_TOKENS] > 0 for r in ok)
    assert stage.stats["requests"] >= len(rows) + len(ok) and stage.stats["http_retries"] == 0


@pytest.mark.parametrize(
    ("change", "msg"),
    [
        ({"key": "sk-wrong"}, "--api-key-env must hold a key"),
        ({"model": "no/such-model"}, "--model must be a model"),
        ({"url": "http://127.0.0.1:9/v1"}, "--base-url must reach"),
    ],
)
def test_bad_key_model_or_url_exit_2_before_any_actor(tmp_path, server, smoke_dir, change, msg):
    scored = tmp_path / "scored"
    _, rows = make_clips(tmp_path, [(0, 10)])
    write_parquet_atomic(S.table_from_rows(rows), scored / "part-0.parquet")
    env = {**os.environ, KEY_ENV: change.get("key", KEY), "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.caption",
            "--input",
            str(scored),
            "--output",
            str(tmp_path / "c"),
            "--engine",
            "openai",
            "--base-url",
            change.get("url", server),
            "--model",
            change.get("model", str(smoke_dir)),
            "--api-key-env",
            KEY_ENV,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0]
    assert KEY not in r.stderr + r.stdout and "sk-wrong" not in r.stderr
    assert not (tmp_path / "c" / "_stats").exists()  # no actor started


def _assert_no_key(*roots: Path, texts: str = "") -> int:
    """No file under `roots` (outputs, summaries, server and Ray logs) and no text holds the key."""
    seen = 0
    for root in roots:
        for f in [root] if root.is_file() else root.rglob("*"):
            if f.is_file() and not f.is_symlink():
                assert KEY.encode() not in f.read_bytes(), f
                seen += 1
    assert KEY not in texts
    return seen


@pytest.mark.slow
@pytest.mark.ray
def test_job_through_server_killed_mid_run_then_resumed(tmp_path, smoke_dir):
    """jobs.caption --engine openai: server killed mid-run -> exit 1 with one line and no empty
    caption written; a rerun against a restarted server completes the rest."""
    spans = [(s, s + 6 + s % 9) for s in range(0, 84, 6)]
    _, rows = make_clips(tmp_path / "media", spans)
    scored = tmp_path / "scored"
    write_parquet_atomic(S.table_from_rows(rows), scored / "part-0.parquet")
    out = tmp_path / "captions"
    # Ray's session logs go to a short folder of our own (unix socket paths are limited to ~107 chars)
    ray_tmp = Path(tempfile.mkdtemp(prefix="rk", dir="/tmp"))
    srv = start_server(smoke_dir, tmp_path / "serve.log")

    def run(base_url):
        env = {
            **os.environ,
            KEY_ENV: KEY,
            "PYTHONPATH": str(REPO),
            "RAY_ADDRESS": "",
            "RAY_TMPDIR": str(ray_tmp),
            "TUBELET_CACHE": str(tmp_path / "cache"),
        }
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jobs.caption",
                "--input",
                str(scored),
                "--output",
                str(out),
                "--engine",
                "openai",
                "--base-url",
                base_url,
                "--model",
                str(smoke_dir),
                "--api-key-env",
                KEY_ENV,
                "--max-in-flight",
                "2",
                "--batch-size",
                "4",
                "--request-retries",
                "2",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    job = run(srv.url)
    try:
        for _ in range(
            1500
        ):  # kill the server (as a crash would) once it has answered a few caption requests
            if srv.completions() >= 6 or job.poll() is not None:
                break
            time.sleep(0.2)
    finally:
        srv.stop(kill=True)
    so, se = job.communicate(timeout=600)
    assert job.returncode == 1, se[-3000:]
    assert se.strip().splitlines()[-1].startswith("error: caption server") and "rerun" in se
    first = read_parts(out, S.CLIP_SCHEMA) if out.exists() else None
    if first is not None:  # what the stopped run wrote: captions or error rows, never an empty caption
        for r in first.to_pylist():
            assert r[S.CAPTION] if r[S.STATUS] == S.STATUS_OK else r[S.ERROR], r
        assert first.num_rows < len(rows)
    srv2 = start_server(smoke_dir, tmp_path / "serve2.log")
    try:
        job = run(srv2.url)
        so2, se2 = job.communicate(timeout=600)
    finally:
        srv2.stop()
    assert job.returncode == 0, se2[-3000:]
    assert srv2.completions() > 0
    got = read_parts(out, S.CLIP_SCHEMA)
    assert sorted(got.column(S.CLIP_ID).to_pylist()) == sorted(r[S.CLIP_ID] for r in rows)
    for r in got.to_pylist():  # QA errors aside (random model), every clip has a caption
        assert r[S.CAPTION] if r[S.STATUS] == S.STATUS_OK else r[S.ERROR], r
    assert any(r[S.STATUS] == S.STATUS_OK for r in got.to_pylist())
    # the key is in no output, summary, server log, Ray log or console text
    try:
        seen = _assert_no_key(out, srv.log, srv2.log, ray_tmp, texts=so + se + so2 + se2)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert seen > 10  # the grep read real files (parts, markers, summaries, Ray's logs)


def test_prompt_upsampling_through_the_server(server, smoke_dir, key_env, monkeypatch):
    """jobs.sample --upsample-engine openai: the flags build the config; the upsampler asks the server."""
    from captioner.upsample import PromptUpsampler
    from jobs import sample

    a = sample.build_parser().parse_args(
        [
            "--input",
            "r",
            "--output",
            "o.mp4",
            "--prompt",
            "a cat",
            "--upsample",
            "--upsample-engine",
            "openai",
            "--upsample-model",
            str(smoke_dir),
            "--upsample-base-url",
            server,
            "--upsample-api-key-env",
            KEY_ENV,
        ]
    )
    cfg = sample.upsample_config(a)
    assert (cfg.engine, cfg.model, cfg.openai.base_url, cfg.openai.api_key_env) == (
        "openai",
        str(smoke_dir),
        server,
        KEY_ENV,
    )
    cfg = replace(
        cfg, sampling=replace(cfg.sampling, max_new_tokens=24), openai=replace(cfg.openai, backoff_s=0.1)
    )
    up = PromptUpsampler(cfg)
    up.probe()
    got = up(["a red kite over a beach", "a cat"], seed=7)
    assert [g.prompt for g in got] == ["a red kite over a beach", "a cat"]
    assert {g.model_id for g in got} == {f"openai:{smoke_dir}:image_url"}
    for g in got:  # an expansion that passed QA, or the user's prompt with the reason: never empty
        assert g.caption and (
            g.upsampled or (g.caption == g.prompt and g.reason.startswith("upsampling failed"))
        )
    assert up.vlm.stats["http_requests"] >= 2 and up.vlm.stats["http_failed"] == 0
    monkeypatch.setenv(KEY_ENV, "sk-wrong")
    with pytest.raises(UsageError, match="--api-key-env must hold a key"):
        PromptUpsampler(cfg).probe()
    for bad, msg in (
        (["--upsample-engine", "openai"], "needs --upsample-model"),
        (["--upsample-base-url", server], "need --upsample-engine openai"),
    ):
        with pytest.raises(UsageError, match=msg):
            sample.upsample_config(
                sample.build_parser().parse_args(
                    ["--input", "r", "--output", "o.mp4", "--prompt", "a cat", "--upsample", *bad]
                )
            )
