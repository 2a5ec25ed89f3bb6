"""A real S3 API server (moto's server mode) on 127.0.0.1 for the object-storage tests.

The server runs as its own process (`python -m moto.server`), so job subprocesses and Ray
workers reach it over HTTP exactly as they would reach MinIO or AWS; clients get only the
standard AWS_* environment variables. Authentication is enforced (moto checks the access key
and the request signature once its first INITIAL_NO_AUTH_ACTION_COUNT requests have been
used to create an IAM user), so a wrong secret is rejected like on AWS.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# requests allowed before auth is enforced: create user, attach policy, create access key
_SETUP_REQUESTS = 3
_POLICY = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    log: Path
    pid: int = 0  # the server process (tests stall it with SIGSTOP)
    env: dict[str, str] = field(default_factory=dict)

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def upload_dir(self, local: Path, uri: str, pattern: str = "*") -> list[str]:
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        c = self.client()
        keys = []
        for p in sorted(local.glob(pattern)):
            if p.is_file():
                key = f"{prefix.rstrip('/')}/{p.name}" if prefix else p.name
                c.upload_file(str(p), bucket, key)
                keys.append(f"s3://{bucket}/{key}")
        return keys

    @contextlib.contextmanager
    def stalled(self, seconds: float) -> Iterator[None]:
        """The server stops answering (SIGSTOP: connections are accepted, nothing is answered) for
        `seconds` from entry, then goes on (SIGCONT), as an overloaded or failing-over store does."""
        os.kill(self.pid, signal.SIGSTOP)
        timer = threading.Timer(seconds, os.kill, (self.pid, signal.SIGCONT))
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
            os.kill(self.pid, signal.SIGCONT)

    def secrets(self) -> list[str]:
        return [self.access_key, self.secret_key]


@contextlib.contextmanager
def s3_server(workdir: Path) -> Iterator[S3Server]:
    """Start moto on a free loopback port, create an IAM user with full access, yield; stop."""
    import boto3

    port = free_port()
    log = workdir / "moto.log"
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(_SETUP_REQUESTS))
    for k in [k for k in env if k.startswith("AWS_")]:
        env.pop(k)
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
                    break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"moto server did not start; see {log}") from None
                time.sleep(0.3)
        iam = boto3.client(
            "iam",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
        )
        iam.create_user(UserName="tubelet")
        iam.put_user_policy(UserName="tubelet", PolicyName="all", PolicyDocument=_POLICY)
        key = iam.create_access_key(UserName="tubelet")["AccessKey"]
        server = S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"], log, proc.pid)
        server.env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": server.access_key,
            "AWS_SECRET_ACCESS_KEY": server.secret_key,
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
