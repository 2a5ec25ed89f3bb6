"""The openai caption engine against a real server: `transformers serve` with the smoke VLM.

A session fixture saves the smoke Qwen2.5-VL to a temp folder and serves it on a free
127.0.0.1 port (tests/openai_server.py: transformers serve plus an API key check).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from captioner.openai_engine import OpenAIConfig
from captioner.stage import SMOKE, CaptionStage, resolve_engine
from captioner.vlm import build_smoke_vlm
from curate import schema as S
from curate.storage import read_parts, write_parquet_atomic
from tests.caption_helpers import make_clips

REPO = Path(__file__).resolve().parent.parent
KEY_ENV = "TUBELET_TEST_CAPTION_KEY"
KEY = "sk-test-7f3a9c2e51d84b06"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, KEY_ENV: KEY, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.openai_server", str(model_dir), str(port), KEY_ENV],
                            cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, f"{url}/v1"
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not start in 120 s")


@pytest.fixture(scope="session")
def smoke_dir(tmp_path_factory) -> Path:
    return build_smoke_vlm(tmp_path_factory.mktemp("served") / "smoke-vlm")


@pytest.fixture(scope="session")
def server(smoke_dir, tmp_path_factory):
    proc, url = start_server(smoke_dir, tmp_path_factory.mktemp("serve-log") / "serve.log")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def _cfg(url: str, model: str, **kw) -> object:
    return replace(SMOKE, engine="openai", model=model, clip_model=None, batch_size=8,
                   openai=OpenAIConfig(base_url=url, api_key_env=KEY_ENV, max_in_flight=4, backoff_s=0.1, **kw))


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


@pytest.mark.parametrize(("change", "msg"), [
    ({"key": "sk-wrong"}, "--api-key-env must hold a key"),
    ({"model": "no/such-model"}, "--model must be a model"),
    ({"url": "http://127.0.0.1:9/v1"}, "--base-url must reach"),
])
def test_bad_key_model_or_url_exit_2_before_any_actor(tmp_path, server, smoke_dir, change, msg):
    scored = tmp_path / "scored"
    _, rows = make_clips(tmp_path, [(0, 10)])
    write_parquet_atomic(S.table_from_rows(rows), scored / "part-0.parquet")
    env = {**os.environ, KEY_ENV: change.get("key", KEY), "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}
    r = subprocess.run([sys.executable, "-m", "jobs.caption", "--input", str(scored), "--output", str(tmp_path / "c"),
                        "--engine", "openai", "--base-url", change.get("url", server),
                        "--model", change.get("model", str(smoke_dir)), "--api-key-env", KEY_ENV],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0]
    assert KEY not in r.stderr + r.stdout and "sk-wrong" not in r.stderr
    assert not (tmp_path / "c" / "_stats").exists()  # no actor started


@pytest.mark.slow
@pytest.mark.ray
def test_job_through_server_killed_mid_run_then_resumed(tmp_path, smoke_dir):
    """jobs.caption --engine openai: server killed mid-run -> exit 1, one line; a rerun completes."""
    spans = [(s, s + 6 + s % 9) for s in range(0, 84, 6)]
    _, rows = make_clips(tmp_path / "media", spans)
    scored = tmp_path / "scored"
    write_parquet_atomic(S.table_from_rows(rows), scored / "part-0.parquet")
    out = tmp_path / "captions"
    log = tmp_path / "serve.log"
    proc, url = start_server(smoke_dir, log)

    def run(base_url):
        env = {**os.environ, KEY_ENV: KEY, "PYTHONPATH": str(REPO), "RAY_ADDRESS": "",
               "TUBELET_CACHE": str(tmp_path / "cache")}
        return subprocess.Popen([sys.executable, "-m", "jobs.caption", "--input", str(scored), "--output", str(out),
                                 "--engine", "openai", "--base-url", base_url, "--model", str(smoke_dir),
                                 "--api-key-env", KEY_ENV, "--max-in-flight", "2", "--batch-size", "4",
                                 "--request-retries", "2"],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    job = run(url)
    try:
        for _ in range(600):  # kill the server once it has answered a few caption requests
            if log.read_text().count("POST /v1/chat/completions") >= 6 or job.poll() is not None:
                break
            time.sleep(0.2)
    finally:
        proc.kill()
    so, se = job.communicate(timeout=600)
    assert job.returncode == 1, se[-3000:]
    assert se.strip().splitlines()[-1].startswith("error: caption server") and "rerun" in se
    proc, url = start_server(smoke_dir, tmp_path / "serve2.log")
    try:
        job = run(url)
        so2, se2 = job.communicate(timeout=600)
    finally:
        proc.terminate()
    assert job.returncode == 0, se2[-3000:]
    got = read_parts(out, S.CLIP_SCHEMA)
    assert sorted(got.column(S.CLIP_ID).to_pylist()) == sorted(r[S.CLIP_ID] for r in rows)
    okc = [c for c, st in zip(got.column(S.CAPTION).to_pylist(), got.column(S.STATUS).to_pylist()) if st == S.STATUS_OK]
    assert okc and all(okc)  # QA errors aside (random model), every clip has a caption
    # the key is in no output, log or summary
    for f in [*out.rglob("*"), log]:
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f
    assert KEY not in so + se + so2 + se2
