"""`transformers serve` with an API key check, for the caption-engine tests (run as a subprocess).

`python -m tests.openai_server MODEL_DIR PORT KEY_ENV`: transformers' own OpenAI-compatible app
(the same code `transformers serve` runs), bound to 127.0.0.1, answering 401 to requests without
`Authorization: Bearer $KEY_ENV` as vLLM's `--api-key` does (transformers serve has no key check).
"""

from __future__ import annotations

import os
import sys


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
