"""Captions from any server that speaks the OpenAI chat-completions API.

vLLM (`vllm serve`), SGLang, `transformers serve`, TGI or a hosted model: continuous batching,
paged attention and quantisation come from the server, so the Ray actors that call it need no
GPU. One `OpenAIEngine` per caption actor keeps up to `max_in_flight` requests open at once
(a thread pool over one pooled httpx client), with a timeout per request and retries with
exponential backoff on 429, 5xx and connection errors. After the last try a request becomes
`Failed` (an error row with the reason), unless the server no longer answers at all: then
`EngineUnavailable` stops the job, and a rerun resumes.

Frames go as the model expects video: one `video_url` part (an H.264 mp4 data URL of the
sampled frames) where the server takes it, else one `image_url` part (a JPEG data URL) per
frame; `probe` decides at start-up (`frames="auto"`) and `caption_model` says which
(`openai:<model>:video_url` or `openai:<model>:image_url`).

The API key is read from the environment variable the config names (`api_key_env`), in the
process that sends the requests; it is never stored in a config, a row, a log or a summary,
and messages from the server are scrubbed of it.
"""

from __future__ import annotations

import base64
import io
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from captioner.engine import EngineUnavailable
from captioner.vlm import Failed, Generation, Request, Sampling
from curate.errors import UsageError

FramesMode = Literal["auto", "video", "images"]
_PART = {"video": "video_url", "images": "image_url"}
_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class OpenAIConfig:
    base_url: str = "http://127.0.0.1:8000/v1"  # the API root, ending in /v1 for most servers
    api_key_env: str | None = None  # NAME of the environment variable holding the key; None: no key
    frames: FramesMode = "auto"  # auto: video_url where the server takes it, else image_url per frame
    max_in_flight: int = 16  # requests open at once per caption actor
    timeout_s: float = 300.0  # per request (a long caption on a busy server takes a while)
    max_retries: int = 4  # extra tries on 429 / 5xx / connection errors
    backoff_s: float = 0.5  # first wait; doubles each try (or the server's Retry-After)
    jpeg_quality: int = 90


def resource_free(cfg: OpenAIConfig) -> OpenAIConfig:
    """What of the config decides the captions (the frames mode): where the server is, the key's
    name and the client's concurrency, timeouts and retries do not, so they are left out of the hash."""
    return replace(OpenAIConfig(), frames=cfg.frames)


def api_key(cfg: OpenAIConfig) -> str | None:
    """The key from the named environment variable (None when no variable is named)."""
    if not cfg.api_key_env:
        return None
    key = os.environ.get(cfg.api_key_env, "")
    if not key:
        raise UsageError(
            f"--api-key-env must name a set, non-empty environment variable, got {cfg.api_key_env!r} "
            f"(unset or empty); export {cfg.api_key_env}=<key> or drop --api-key-env"
        )
    return key


# --- frames as data URLs ---------------------------------------------------------------------


def jpeg_data_url(frame: np.ndarray, quality: int = 90) -> str:
    """(H, W, 3) uint8 RGB -> data:image/jpeg;base64,..."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, "JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def mp4_data_url(frames: np.ndarray, fps: float) -> str:
    """(T, H, W, 3) uint8 RGB -> an H.264 mp4 of exactly those frames, as data:video/mp4;base64,..."""
    import av

    _, h, w, _ = frames.shape  # (T, H, W, 3)
    frames = frames[:, : h - h % 2, : w - w % 2]  # yuv420p needs even sides
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as box:
        stream = box.add_stream("libx264", rate=max(1, round(fps)))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                box.mux(packet)
        for packet in stream.encode():
            box.mux(packet)
    return "data:video/mp4;base64," + base64.b64encode(buf.getvalue()).decode()


def to_openai_messages(request: Request, mode: Literal["video", "images"], quality: int = 90) -> list[dict]:
    """tubelet chat messages ({"type": "video"} marks the frames) -> OpenAI chat messages."""
    out = []
    for m in request.messages:
        content = m["content"]
        if isinstance(content, str) or all(c["type"] == "text" for c in content):
            text = content if isinstance(content, str) else "".join(c["text"] for c in content)
            out.append({"role": m["role"], "content": text})
            continue
        parts: list[dict[str, Any]] = []
        for c in content:
            if c["type"] == "text":
                parts.append({"type": "text", "text": c["text"]})
            elif c["type"] == "video" and request.frames is not None:
                if mode == "video":
                    parts.append(
                        {
                            "type": "video_url",
                            "video_url": {"url": mp4_data_url(request.frames, request.fps or 2.0)},
                        }
                    )
                else:
                    parts += [
                        {"type": "image_url", "image_url": {"url": jpeg_data_url(f, quality)}}
                        for f in request.frames
                    ]
        out.append({"role": m["role"], "content": parts})
    return out


def sampling_body(sampling: Sampling, seed: int | None) -> dict[str, Any]:
    """Sampling -> request fields. The repetition penalty goes as frequency_penalty = penalty - 1
    (what `transformers serve` maps back exactly; vLLM / hosted APIs read it as their additive
    penalty of the same small size)."""
    body: dict[str, Any] = {
        "max_tokens": sampling.max_new_tokens,
        "seed": sampling.seed if seed is None else seed,
    }
    if sampling.do_sample:
        body.update(temperature=sampling.temperature, top_p=sampling.top_p)
    else:
        body["temperature"] = 0.0  # greedy
    if sampling.repetition_penalty != 1.0:
        body["frequency_penalty"] = round(sampling.repetition_penalty - 1.0, 4)
    return body


# --- the client --------------------------------------------------------------------------------


class _Client:
    """One pooled httpx client with the key, retries and a scrubber for messages."""

    def __init__(self, cfg: OpenAIConfig, model: str, pool: int = 4):
        import httpx

        self.cfg, self.model = cfg, model
        self._key = api_key(cfg)
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        self.http = httpx.Client(
            base_url=cfg.base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(cfg.timeout_s, connect=min(10.0, cfg.timeout_s)),
            limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
        )

    def scrub(self, text: str) -> str:
        """One line, bounded, and never the key (some servers echo a part of a bad key)."""
        text = " ".join(str(text).split())[:240]
        return text.replace(self._key, "***") if self._key else text

    def post(self, path: str, body: dict) -> Any:
        return self.http.post(path, json=body)

    def alive(self) -> bool:
        import httpx

        try:
            return self.http.get("models", timeout=5.0).status_code < 500
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        self.http.close()


class OpenAIEngine:
    """`OpenAIEngine(cfg, model)`: `generate` sends its requests concurrently (up to max_in_flight)."""

    def __init__(self, cfg: OpenAIConfig, model: str):
        if cfg.frames == "auto":
            raise UsageError(
                "OpenAIConfig.frames must be resolved (video or images) before the engine starts, "
                "got 'auto'; call openai_engine.probe() on the driver first"
            )
        self.cfg, self.model = cfg, model
        self.model_id = f"openai:{model}:{_PART[cfg.frames]}"
        self.client = _Client(cfg, model, pool=cfg.max_in_flight)
        self.pool = ThreadPoolExecutor(max_workers=cfg.max_in_flight, thread_name_prefix="caption-http")
        self._lock = threading.Lock()
        self.stats = {"http_requests": 0, "http_retries": 0, "http_failed": 0, "http_seconds": 0.0}

    def fit_frames(self, request: Request, max_new_tokens: int) -> tuple[Request, int]:
        # the server's tokenizer is not here: num_frames must fit its context, and an overflow comes
        # back as an HTTP 400 that becomes the clip's error row with the server's message
        return request, 0

    def generate(self, requests: list[Request], sampling: Sampling) -> list[Generation | Failed]:
        return list(self.pool.map(lambda r: self._one(r, sampling), requests))

    def _count(self, key: str, v: float = 1) -> None:
        with self._lock:
            self.stats[key] += v

    def _one(self, request: Request, sampling: Sampling) -> Generation | Failed:
        import httpx

        body = {
            "model": self.model,
            "messages": to_openai_messages(request, self.cfg.frames, self.cfg.jpeg_quality),
            **sampling_body(sampling, request.seed),
        }
        last = ""
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                self._count("http_retries")
            t0 = time.perf_counter()
            wait = self.cfg.backoff_s * 2**attempt
            try:
                r = self.client.post("chat/completions", body)
            except httpx.HTTPError as e:  # refused, reset, timed out
                last = f"{type(e).__name__}: {self.client.scrub(str(e))}"
            else:
                if r.status_code == 200:
                    self._count("http_requests")
                    self._count("http_seconds", time.perf_counter() - t0)
                    return self._parse(r)
                last = f"HTTP {r.status_code}: {self.client.scrub(r.text)}"
                if r.status_code not in _RETRY_STATUS:
                    self._count("http_failed")
                    return Failed(f"caption server refused the request ({last})")
                retry_after = r.headers.get("retry-after", "")
                if retry_after.replace(".", "", 1).isdigit():
                    wait = min(60.0, max(wait, float(retry_after)))
            if attempt < self.cfg.max_retries:
                time.sleep(wait)
        if not self.client.alive():
            raise EngineUnavailable(
                f"caption server {self.cfg.base_url} stopped answering ({last}); "
                "restart it and rerun: the run resumes where it stopped"
            )
        self._count("http_failed")
        return Failed(f"caption request failed after {self.cfg.max_retries + 1} tries ({last})")

    def _parse(self, r: Any) -> Generation | Failed:
        try:
            data = r.json()
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
            usage = data.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            return Failed(
                f"caption server sent an unreadable completion ({type(e).__name__}: "
                f"{self.client.scrub(r.text)})"
            )
        completion = usage.get("completion_tokens")
        return Generation(
            text.strip(),
            int(completion) if completion is not None else len(text.split()),
            choice.get("finish_reason") == "stop",
            usage.get("prompt_tokens"),
        )

    def close(self) -> None:
        self.pool.shutdown(wait=False)
        self.client.close()


# --- the start-up probe ---------------------------------------------------------------------------


def probe(cfg: OpenAIConfig, model: str, text_only: bool = False) -> OpenAIConfig:
    """On the driver, before any actor: the server answers, takes the key, serves `model` and
    (unless `text_only`: prompt upsampling) takes frames. Returns the config with `frames`
    resolved; a problem is a UsageError (exit 2)."""
    import httpx

    client = _Client(cfg, model)
    try:
        text = Request([{"role": "user", "content": [{"type": "text", "text": "Reply with OK."}]}])
        r = _probe_post(client, text, "video" if cfg.frames == "video" else "images")
        if r.status_code in (401, 403):
            raise UsageError(
                f"--api-key-env must hold a key {cfg.base_url} accepts, got HTTP {r.status_code} with "
                f"{'the key in ' + repr(cfg.api_key_env) if cfg.api_key_env else 'no key'}; "
                "export the right key in that variable (or pass --api-key-env VAR)"
            )
        if r.status_code != 200:
            served = _served(client)
            # 404 (vLLM, OpenAI), an unlisted id, or a 4xx that names the id (transformers serve
            # answers 400 for a model it cannot load): the model, not the server, is wrong
            named = 400 <= r.status_code < 500 and model in r.text
            if r.status_code == 404 or named or (served is not None and model not in served):
                raise UsageError(
                    f"--model must be a model {cfg.base_url} serves, got {model!r} "
                    f"(HTTP {r.status_code}: {client.scrub(r.text)[:120]}); "
                    f"pass one of {served[:8] if served else '[...]'} or check that --base-url ends in /v1"
                )
            raise UsageError(
                f"--base-url must be an OpenAI-compatible server that completes a chat request, got "
                f"HTTP {r.status_code} from {cfg.base_url} ({client.scrub(r.text)[:160]}); "
                "check --base-url and the server's log"
            )
        if text_only:
            return replace(cfg, frames="images" if cfg.frames == "auto" else cfg.frames)
        mode = cfg.frames
        frames = np.full((2, 56, 56, 3), 128, np.uint8)
        seen = Request(
            [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Reply with OK."}]}],
            frames,
            2.0,
        )
        if mode in ("auto", "video"):
            try:
                r = _probe_post(client, seen, "video")
                status, why = r.status_code, client.scrub(r.text)[:120]
            except httpx.HTTPError as e:  # some servers drop the connection on a video they cannot decode
                status, why = 0, f"{type(e).__name__}: {client.scrub(str(e))[:100]}"
            if status != 200:  # a fresh connection: the failed one may have been dropped by the server
                client.close()
                client = _Client(cfg, model)
            if status == 200:
                mode = "video"
            elif mode == "video":
                raise UsageError(
                    f"--frames video needs a server that takes video_url parts, got HTTP {status} "
                    f"({why}); pass --frames images (or auto)"
                )
        if mode in ("auto", "images"):
            r = _probe_post(client, seen, "images")
            if r.status_code != 200:
                raise UsageError(
                    f"--model must be a vision model that takes image_url (or video_url) parts, got "
                    f"HTTP {r.status_code} for {model!r} ({client.scrub(r.text)[:120]}); "
                    "serve a vision-language model"
                )
            mode = "images"
        return replace(cfg, frames=mode)
    except httpx.HTTPError as e:
        raise UsageError(
            f"--base-url must reach an OpenAI-compatible server, got {cfg.base_url!r} "
            f"({type(e).__name__}: {client.scrub(str(e))[:120]}); start the server or fix --base-url"
        ) from e
    finally:
        client.close()


def _probe_post(client: _Client, request: Request, mode: Literal["video", "images"]) -> Any:
    body = {
        "model": client.model,
        "messages": to_openai_messages(request, mode),
        "max_tokens": 1,
        "temperature": 0.0,
    }
    return client.http.post("chat/completions", json=body, timeout=min(60.0, client.cfg.timeout_s))


def _served(client: _Client) -> list[str] | None:
    """Model ids of GET /models, or None when the server does not list them."""
    import httpx

    try:
        r = client.http.get("models", timeout=10.0)
        return [m["id"] for m in r.json()["data"]] if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
