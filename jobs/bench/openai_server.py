"""A local OpenAI-compatible server for a model folder: `transformers serve` plus an API key check.

For the caption-engine tests and `python -m jobs.bench caption --engine openai` (needs the
`transformers[serving]` extra, in the dev extras). `start_server(model_dir, log, key_env)`
starts `python -m jobs.bench.openai_server MODEL_DIR PORT KEY_ENV` as a subprocess on a free
127.0.0.1 port and waits for /health; the child serves transformers' own OpenAI-compatible app
(the code `transformers serve` runs) and answers 401 to /v1 requests without
`Authorization: Bearer $KEY_ENV`, as vLLM's `--api-key` does (transformers serve has no key check).
The key travels only in the child's environment, never on its command line.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]


@dataclass
class LocalServer:
    proc: subprocess.Popen
    url: str  # the API root, ending in /v1
    log: Path  # stdout + stderr of the server (its access log counts the requests)

    def stop(self, kill: bool = False) -> None:
        """Terminate (or kill, as a crash would) and reap the server process."""
        if self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def completions(self) -> int:
        """Chat completions the server has logged so far (from its access log)."""
        return self.log.read_text(errors="replace").count("POST /v1/chat/completions")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    model_dir: str | Path, log: Path, key_env: str, key: str | None = None, wait_s: float = 180.0
) -> LocalServer:
    """Serve `model_dir` on a free 127.0.0.1 port; the key is $key_env (or `key`, put there for the child)."""
    import httpx

    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(_REPO), os.environ.get("PYTHONPATH")])),
    }
    if key is not None:
        env[key_env] = key
    if not env.get(key_env):
        raise ValueError(f"start_server needs a key in ${key_env}")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobs.bench.openai_server", str(model_dir), str(port), key_env],
            cwd=_REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = LocalServer(proc, f"http://127.0.0.1:{port}/v1", log)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.stop(kill=True)
    raise RuntimeError(f"server did not answer /health in {wait_s:.0f} s: {log.read_text()[-2000:]}")


def main() -> None:
    model, port, key_env = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    key = os.environ[key_env]
    import transformers.cli.serving.server as srv
    from fastapi.responses import JSONResponse

    build = srv.build_server

    def with_key(*args, **kwargs):
        app = build(*args, **kwargs)

        @app.middleware("http")
        async def check_key(request, call_next):
            if request.url.path.startswith("/v1") and request.headers.get("authorization") != f"Bearer {key}":
                return JSONResponse({"error": {"message": "invalid API key"}}, status_code=401)
            return await call_next(request)

        return app

    srv.build_server = with_key  # Serve() imports build_server when it runs
    from transformers.cli.serve import Serve

    Serve(force_model=model, host="127.0.0.1", port=port, device="cpu", log_level="warning")


if __name__ == "__main__":
    main()
