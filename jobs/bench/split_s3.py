"""`python -m jobs.bench split --s3`: jobs.split's unit of work reading from an S3 API server
against reading from the local disk, on the same files in the same run.

Each video is split twice, alternately (so a busy machine slows both sides alike): from the
local disk into a local OUT, and from s3://BUCKET/raw (fetched by the worker into a temp file,
hashed, probed, decoded, detected) into s3://BUCKET/out (parts and markers as whole objects).
The server is the one AWS_ENDPOINT_URL names, or, without it, a moto server started on
127.0.0.1 for the run (`pip install "moto[server]"`). Reports frames/s of both and their ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from curate import schema as S
from curate.io import storage
from curate.shots.split import SplitConfig
from jobs.bench.split import DEFAULT_VIDEOS
from jobs.runtime.split_parts import process_one


@contextlib.contextmanager
def s3_endpoint() -> Iterator[None]:
    """Use AWS_ENDPOINT_URL when set; else run moto on a free loopback port (dummy credentials)."""
    if os.environ.get("AWS_ENDPOINT_URL"):
        yield
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")
    }
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_REGION": "us-east-1",
        }
    )
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):  # noqa: S310 (http on loopback)
                    break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("the moto server did not start: pip install 'moto[server]'") from None
                time.sleep(0.3)
        yield
    finally:
        proc.terminate()
        proc.wait(10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _bucket(name: str) -> None:
    import boto3

    boto3.client("s3").create_bucket(Bucket=name)


def run(files: list[Path], cfg: SplitConfig, bucket: str, local_out: str) -> dict:
    _bucket(bucket)
    remote = []
    for f in files:  # upload (not timed)
        uri = f"s3://{bucket}/raw/{f.name}"
        storage.publish_copy(str(f), uri)
        remote.append(uri)
    # warm-up (not timed): imports, detector set-up, the server's first requests
    process_one(str(files[0]), cfg, os.path.join(local_out, "warm"))
    process_one(remote[0], cfg, f"s3://{bucket}/warm")
    t_local = t_s3 = 0.0
    frames = 0
    for i, (f, uri) in enumerate(zip(files, remote)):
        timed: dict[str, float] = {}
        results: dict[str, dict] = {}
        # alternate which side goes first, so page-cache and load drift favour neither
        for side in ("local", "s3") if i % 2 == 0 else ("s3", "local"):
            t = time.perf_counter()
            results[side] = (
                process_one(str(f), cfg, local_out)
                if side == "local"
                else process_one(uri, cfg, f"s3://{bucket}/out")
            )
            timed[side] = time.perf_counter() - t
        t_local += timed["local"]
        t_s3 += timed["s3"]
        a, b = results["local"], results["s3"]
        if (a["status"], a["num_clips"]) != (b["status"], b["num_clips"]):
            raise RuntimeError(f"{f.name}: local and S3 splits differ: {a} vs {b}")
        videos = storage.read_table(storage.join(local_out, "videos", f"part-{_key(str(f))}.parquet"))
        frames += int(videos.column(S.FRAME_COUNT)[0].as_py() or 0)
    return {
        "files": len(files),
        "frames": frames,
        "bytes": sum(f.stat().st_size for f in files),
        "local_seconds": t_local,
        "s3_seconds": t_s3,
        "local_fps": frames / t_local,
        "s3_fps": frames / t_s3,
        "ratio_s3_to_local": t_local / t_s3,
    }


def _key(uri: str) -> str:
    from jobs.runtime.split_parts import source_key

    return source_key(uri)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jobs.bench split --s3",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "--videos",
        default=os.environ.get("TUBELET_TEST_VIDEOS", str(DEFAULT_VIDEOS)),
        help="folder of input videos",
    )
    p.add_argument("--detector", default="content", help="shot detector")
    p.add_argument("--out", default="bench-out", help="scratch folder for the benchmark's outputs")
    args = p.parse_args(argv)
    files = sorted(
        f for f in Path(args.videos).iterdir() if f.suffix.lower() in (".mp4", ".webm", ".mkv", ".mov")
    )
    if not files:
        print(f"error: --videos must hold videos, found none in {args.videos!r}", file=sys.stderr)
        return 2
    cfg = SplitConfig(detector=args.detector)
    local_out = tempfile.mkdtemp(prefix="tubelet-bench-s3-")
    try:
        with s3_endpoint():
            r = run(files, cfg, f"tubelet-bench-{os.getpid()}", local_out)
    finally:
        shutil.rmtree(local_out, ignore_errors=True)
    mb = r["bytes"] / 1e6
    print(
        f"\njobs.split unit of work on {r['files']} videos ({mb:.1f} MB, {r['frames']} frames), detector "
        f"{args.detector}, S3 server {os.environ.get('AWS_ENDPOINT_URL') or 'moto on 127.0.0.1'}\n"
    )
    print("| source -> output | seconds | frames/s |")
    print("|---|---|---|")
    print(f"| local disk -> local disk | {r['local_seconds']:.2f} | {r['local_fps']:.0f} |")
    print(f"| s3:// -> s3:// | {r['s3_seconds']:.2f} | {r['s3_fps']:.0f} |")
    print(f"\nratio (S3 throughput / local throughput): {r['ratio_s3_to_local']:.3f}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "bench_split_s3.json").write_text(json.dumps(r, indent=2))
    return 0
