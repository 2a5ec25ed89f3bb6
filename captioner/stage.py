"""CaptionStage: dense + short captions for kept clips (fills the `caption` column group).

Per batch of clips: frames (already decoded by a CPU task, or decoded here) -> fit to the
model context -> batched generation grouped by frame count -> QA -> one retry with
different sampling for failures -> short caption from the dense one (text path) -> rows.
The prompt carries the clip's measured facts (camera motion, on-screen text) as hints
(prompt dense-v2); QA records where a caption contradicts them (`caption_qa["grounding"]`),
and the score stage's CLIP gives each caption a `caption_clip_score` (captioner/clip_score.py).
A short caption that fails QA or generation is left null (`caption_qa` gets `short_failed`
with the reason); the clip stays ok on its dense caption, never given a made-up short one.
Results are keyed by row index from start to end, so batching, sorting and retries can
never attach a caption to another clip.

Dropped clips (`kept` false) and rows already in error pass through untouched.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa

from captioner import prompts
from captioner.clip_score import CaptionClipScorer
from captioner.engine import EngineName, EngineUnavailable
from captioner.openai_engine import OpenAIConfig, resource_free
from captioner.qa import QAConfig, QAResult, check_caption, check_grounding, check_short
from captioner.vlm import Failed, Generation, Request, Sampling, derive_seed, load_vlm
from curate import __version__
from curate.errors import OnError, StageError, one_line
from curate.io.storage import config_hash
from curate.schema import (
    AHEAD_PREFIX,
    CAMERA_MOTION,
    CAPTION,
    CAPTION_CLIP_SCORE,
    CAPTION_COMPLETION_TOKENS,
    CAPTION_MODEL,
    CAPTION_PROMPT_TOKENS,
    CAPTION_QA,
    CAPTION_SHORT,
    CLIP_EMBEDDING,
    CLIP_ID,
    CONFIG_HASH,
    END_FRAME,
    END_PTS,
    ERROR,
    FAILED_STAGE,
    FLOW_MAGNITUDE,
    KEPT,
    OCR_TEXT,
    PROMPT_VERSION,
    SOURCE_URI,
    START_FRAME,
    START_PTS,
    STATUS,
    STATUS_ERROR,
    STATUS_OK,
    TUBELET_VERSION,
    conform,
    set_columns,
)
from curate.scores import score_config
from curate.video.decode import ClipFrames, Selection, decode_clip, sample_uniform

STAGE = "caption"

# Transport columns: sampled frames travel from the CPU decode tasks to the model actors in
# these (small frames, uint8). They are not part of CLIP_SCHEMA and are dropped on output.
FRAMES = "_caption_frames"  # binary: (T, H, W, 3) uint8 RGB, C order
FRAMES_SHAPE = "_caption_frames_shape"  # list<int32> [T, H, W, 3]
FRAMES_FPS = "_caption_frames_fps"  # f64: rate of the sampled frames
FRAMES_ERROR = "_caption_frames_error"  # str: why decoding failed (then FRAMES is null)


# Greedy with a mild repetition penalty first; a QA failure is retried with sampling, which
# breaks the loops and refusals greedy decoding falls into.
_GREEDY = Sampling(max_new_tokens=320, repetition_penalty=1.05)
_RETRY = Sampling(
    max_new_tokens=320, do_sample=True, temperature=0.7, top_p=0.9, repetition_penalty=1.1, seed=1
)


@dataclass(frozen=True)
class CaptionConfig:
    # transformers: hub id, local folder, or smoke:<family>; openai: the model's name on the server
    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    engine: EngineName = (
        "transformers"  # transformers: generate in the actor; openai: a chat-completions server
    )
    openai: OpenAIConfig = field(default_factory=OpenAIConfig)  # the server, when engine="openai"
    prompt_version: str = prompts.LATEST
    num_frames: int = 16  # uniform over the clip (fewer if the clip is shorter or the context small)
    max_side: int = 448  # decode size of the longer side (the processor may shrink further)
    frame_margin: float = 0.02  # share of the span skipped at each end (fades, cut leftovers)
    max_context: int | None = 32768  # cap on prompt + new tokens (None: the model's own limit)
    batch_size: int = 8  # clips per generate call
    sampling: Sampling = _GREEDY  # first attempt
    retry_sampling: Sampling = _RETRY  # second attempt, for clips whose caption failed QA
    short_max_new_tokens: int = 64
    qa: QAConfig = field(default_factory=QAConfig)
    device: str = "auto"
    dtype: str = "auto"
    on_error: OnError = "record"
    grounding: bool = True  # QA flags captions contradicting camera_motion / ocr_text
    # caption_clip_score: the score stage's open_clip model (same loader); None: not computed
    clip_model: str | None = None
    clip_pretrained: str | None = None
    clip_smoke: bool = False  # clip_model is the smoke preset's tiny random CLIP (built when missing)
    weights_dir: str | None = None  # folder with <dir>/<hub id> (hf download --local-dir); None: HF cache


# The default preset: Qwen/Qwen2.5-VL-7B-Instruct (Apache-2.0; ~16 GB of weights, bf16 on one GPU per
# actor). Fetch once with `hf download Qwen/Qwen2.5-VL-7B-Instruct` (or point `model` / --weights-dir
# at a local folder). The other family works the same way: model="llava-hf/llava-onevision-qwen2-7b-ov-hf".
DEFAULT = CaptionConfig(
    clip_model=score_config.DEFAULT.clip_model, clip_pretrained=score_config.DEFAULT.clip_pretrained
)
# Smoke: a tiny random model built offline. Its captions are random bytes that would fail the
# real QA bounds, so QA only rejects empty output and loops here; rows say `smoke-random`.
SMOKE = CaptionConfig(
    model="smoke:qwen2_5_vl",
    num_frames=8,
    max_side=160,
    max_context=4096,
    batch_size=4,
    sampling=Sampling(max_new_tokens=24),
    retry_sampling=Sampling(max_new_tokens=24, do_sample=True, seed=1),
    short_max_new_tokens=12,
    qa=QAConfig(
        min_words=1,
        max_words=1000,
        short_min_words=1,
        short_max_words=1000,
        trim_truncated=True,
        require_finished=False,
    ),
    device="cpu",
    clip_model=score_config.SMOKE.clip_model,
    clip_pretrained=None,
    clip_smoke=True,
)


def caption_hash(cfg: CaptionConfig) -> str:
    """Hash of what decides the captions; batch size, device, error policy and the server's address,
    key name and client limits are left out so that rerunning with other resources resumes
    instead of starting over."""
    server = resource_free(cfg.openai) if cfg.engine == "openai" else OpenAIConfig()
    return config_hash(replace(cfg, batch_size=0, device="", on_error="record", openai=server))


def resolve_engine(cfg: CaptionConfig) -> CaptionConfig:
    """On the driver, before any actor starts: with engine="openai", one probe request checks the
    server, the key and the model and decides how frames are sent (a problem is a UsageError)."""
    if cfg.engine != "openai":
        return cfg
    from captioner.openai_engine import probe

    return replace(cfg, openai=probe(cfg.openai, cfg.model))


def planned_frames(start_frame: int, end_frame: int, cfg: CaptionConfig) -> int:
    """Frames a clip will be sampled with (before any context reduction): used to group batches."""
    return len(sample_uniform(end_frame - start_frame, cfg.num_frames, cfg.frame_margin))


def source_path(uri: str) -> str:
    return uri[len("file://") :] if uri.startswith("file://") else uri


def selection(row: dict[str, Any], cfg: CaptionConfig) -> Selection:
    """The frames a caption sees: `num_frames` uniformly spaced offsets, longer side `max_side`."""
    span = int(row[END_FRAME]) - int(row[START_FRAME])
    offsets = sample_uniform(span, cfg.num_frames, cfg.frame_margin)
    return Selection(offsets=offsets, max_side=cfg.max_side)


def frames_of(clip: ClipFrames, row: dict[str, Any]) -> tuple[np.ndarray, float]:
    """((T, H, W, 3) uint8 frames, their rate over the clip's duration) of a decoded selection."""
    duration = max(1e-3, float(row[END_PTS]) - float(row[START_PTS]))
    return clip.frames, len(clip.frames) / duration


def decode_row(row: dict[str, Any], cfg: CaptionConfig) -> tuple[np.ndarray, float]:
    """Uniformly sampled frames of one clip: ((T, H, W, 3) uint8, sampled fps)."""
    sel = selection(row, cfg)
    clip = decode_clip(
        source_path(row[SOURCE_URI]), row[START_PTS], row[END_PTS], offsets=sel.offsets, max_side=sel.max_side
    )
    return frames_of(clip, row)


def todo_rows(table: pa.Table) -> list[int]:
    """Rows a caption is written for: kept, status ok (or not set yet)."""
    kept = table.column(KEPT).to_pylist()
    status = table.column(STATUS).to_pylist()
    return [i for i, (k, s) in enumerate(zip(kept, status)) if k and s in (None, STATUS_OK)]


def attach_frames(table: pa.Table, cfg: CaptionConfig) -> pa.Table:
    """CPU side (a Ray task ahead of the model actors): decode kept clips into transport columns."""
    frames: dict[int, tuple[np.ndarray, float]] = {}
    errors: dict[int, str] = {}
    rows = table.to_pylist()
    for i in todo_rows(table):
        try:
            frames[i] = decode_row(rows[i], cfg)
        except Exception as e:  # a bad clip is data: recorded by the model actor
            errors[i] = one_line(e)
    return with_frames(table, frames, errors)


def with_frames(
    table: pa.Table, frames: dict[int, tuple[np.ndarray, float]], errors: dict[int, str]
) -> pa.Table:
    """`table` with the transport columns of rows' decoded (frames, fps) or decode errors."""
    n = table.num_rows
    blobs: list[bytes | None] = [None] * n
    shapes: list[list[int] | None] = [None] * n
    fps: list[float | None] = [None] * n
    errs: list[str | None] = [errors.get(i) for i in range(n)]
    for i, (f, rate) in frames.items():
        blobs[i], shapes[i], fps[i] = f.tobytes(), list(f.shape), rate
    for name, col, typ in (
        (FRAMES, blobs, pa.binary()),
        (FRAMES_SHAPE, shapes, pa.list_(pa.int32())),
        (FRAMES_FPS, fps, pa.float64()),
        (FRAMES_ERROR, errs, pa.string()),
    ):
        if name in table.column_names:
            table = table.drop_columns([name])
        table = table.append_column(name, pa.array(col, type=typ))
    return table


@dataclass
class _Item:
    row: int
    clip_id: str
    request: Request
    qa: dict[str, Any] = field(default_factory=dict)
    result: QAResult | None = None
    short: str | None = None
    tokens: dict[str, list[int | None]] = field(default_factory=dict)  # request -> [prompt, completion]


class CaptionStage:
    """`CaptionStage(cfg)`, `.load()` once per actor, then `stage(table) -> table`."""

    def __init__(self, cfg: CaptionConfig):
        self.cfg = cfg
        self.vlm: Any = None  # a captioner.vlm.VLM (tests may put a stub with the same methods here)
        self.clip: CaptionClipScorer | None = (
            CaptionClipScorer(
                cfg.clip_model, cfg.clip_pretrained, cfg.device, cfg.clip_smoke, cfg.weights_dir
            )
            if cfg.clip_model
            else None
        )
        self.hash = caption_hash(cfg)
        prompts.get(cfg.prompt_version)  # fail fast on an unknown version
        # model-side timing: busy (inside __call__) and waiting (between calls, for frames)
        self.stats: dict[str, Any] = {
            "calls": 0,
            "clips": 0,
            "busy_s": 0.0,
            "wait_s": 0.0,
            "requests": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "engine_s": 0.0,
        }
        self._last_end: float | None = None

    def load(self) -> None:
        if self.vlm is None:
            if self.cfg.engine == "openai":
                from captioner.openai_engine import OpenAIEngine

                self.vlm = OpenAIEngine(self.cfg.openai, self.cfg.model)
            else:
                self.vlm = load_vlm(
                    self.cfg.model,
                    self.cfg.device,
                    self.cfg.dtype,
                    self.cfg.max_context,
                    self.cfg.weights_dir,
                )
        if self.clip is not None and self.clip.model is None:
            self.clip.load()

    def __call__(self, table: pa.Table) -> pa.Table:
        t0 = time.perf_counter()
        if self._last_end is not None:
            self.stats["wait_s"] += t0 - self._last_end
        else:
            self.stats["first_start"] = time.time()  # wall clock: comparable across actors
        # frames a later stage decoded ahead ride along untouched (and out of to_pylist)
        ahead = [c for c in table.column_names if c.startswith(AHEAD_PREFIX)]
        out = self._caption(table.drop_columns(ahead))
        for c in ahead:
            out = out.append_column(table.schema.field(c), table.column(c))
        self._last_end = time.perf_counter()
        self.stats["busy_s"] += self._last_end - t0
        self.stats["calls"] += 1
        self.stats["last_end"] = time.time()
        self.stats.update(getattr(self.vlm, "stats", {}))  # the engine's own counters (HTTP retries)
        return out

    # --- steps -----------------------------------------------------------------------------
    def _frames(self, r: dict[str, Any]) -> tuple[np.ndarray, float]:
        """Frames decoded ahead by `attach_frames` (Ray plan), else decoded here."""
        if FRAMES in r or FRAMES_ERROR in r:
            if r.get(FRAMES_ERROR):
                raise StageError(STAGE, r[FRAMES_ERROR])
            if r.get(FRAMES) is not None:
                shape = tuple(r[FRAMES_SHAPE])
                return np.frombuffer(r[FRAMES], np.uint8).reshape(shape), float(
                    r[FRAMES_FPS]
                )  # bytes -> (T,H,W,3)
        return decode_row(r, self.cfg)

    def _fail(self, errors: dict[int, str], row: int, exc: BaseException) -> None:
        if self.cfg.on_error == "raise":
            raise exc
        errors[row] = one_line(exc)

    def _caption(self, table: pa.Table) -> pa.Table:
        if self.vlm is None:
            self.load()
        cfg = self.cfg
        rows = table.to_pylist()
        todo = todo_rows(table)
        self.stats["clips"] += len(todo)
        errors: dict[int, str] = {}
        items: list[_Item] = []
        max_new = max(cfg.sampling.max_new_tokens, cfg.retry_sampling.max_new_tokens)
        for i in todo:
            try:
                frames, fps = self._frames(rows[i])
                hints = prompts.facts(
                    rows[i].get(CAMERA_MOTION), rows[i].get(FLOW_MAGNITUDE), rows[i].get(OCR_TEXT)
                )
                messages = prompts.dense_messages(cfg.prompt_version, hints)
                req, dropped = self.vlm.fit_frames(Request(messages, frames, fps), max_new)
                item = _Item(i, str(rows[i][CLIP_ID]), req)
                item.qa["frames"] = len(req.frames)
                if dropped:
                    item.qa["frames_reduced_from"] = len(frames)  # context too small for all frames
                items.append(item)
            except Exception as e:
                self._fail(errors, i, e)
        # similar frame counts share a batch: less padding, and equal counts for families that stack;
        # then clip ids, so the batches of a set of clips do not depend on the order its rows came in
        items.sort(key=lambda it: (len(it.request.frames), it.clip_id))
        failed = self._dense(items, cfg.sampling, errors, "dense")
        retry = [it for it in failed if it.row not in errors]
        for it in retry:
            it.qa["retried"] = it.result.reason if it.result else None
        for it in self._dense(retry, cfg.retry_sampling, errors, "retry"):
            if it.row not in errors:
                self._fail(errors, it.row, StageError(STAGE, f"caption QA failed twice: {it.result.reason}"))
        good = [it for it in items if it.row not in errors and it.result is not None and it.result.ok]
        if cfg.grounding:
            for it in good:
                r = rows[it.row]
                flags = check_grounding(it.result.text, r.get(CAMERA_MOTION), r.get(OCR_TEXT))
                if flags:
                    it.qa["grounding"] = flags
        self._short(good, errors)
        clip_scores = self._clip_scores(good, rows)
        return self._write(table, good, errors, clip_scores)

    def _clip_scores(self, good: list[_Item], rows: list[dict[str, Any]]) -> dict[int, float | None]:
        """caption_clip_score of each good row (None without a CLIP model or an image embedding)."""
        if self.clip is None or not good:
            return {}
        if self.clip.model is None:
            self.clip.load()
        vals = self.clip.scores(
            [it.result.text for it in good], [rows[it.row].get(CLIP_EMBEDDING) for it in good]
        )
        return {it.row: v for it, v in zip(good, vals)}

    def _generate(
        self,
        batch: list[_Item],
        requests: list[Request],
        sampling: Sampling,
        errors: dict[int, str],
        what: str,
    ) -> list[Generation | None]:
        """Generate for a batch; if the batch call fails, isolate the culprit one request at a time.
        `what` names the request in caption_qa["tokens"] (dense, retry, short)."""
        try:
            t0 = time.perf_counter()
            gens = self.vlm.generate(requests, sampling)
            self.stats["engine_s"] += time.perf_counter() - t0
            if len(gens) != len(requests):
                raise StageError(STAGE, f"model returned {len(gens)} outputs for {len(requests)} inputs")
            out: list[Generation | None] = []
            for it, g in zip(batch, gens):
                if isinstance(g, Failed):  # the engine gave up on this request (e.g. its last HTTP retry)
                    self._fail(errors, it.row, StageError(STAGE, g.reason))
                    out.append(None)
                    continue
                self.stats["requests"] += 1
                self.stats["prompt_tokens"] += g.prompt_tokens or 0
                self.stats["completion_tokens"] += g.new_tokens
                it.tokens[what] = [g.prompt_tokens, g.new_tokens]
                out.append(g)
            return out
        except EngineUnavailable:
            raise  # not the clip's fault: no error row, the job stops and a rerun resumes
        except Exception as e:
            if len(requests) == 1:
                self._fail(errors, batch[0].row, e)
                return [None]
            if self.cfg.on_error == "raise":
                raise
            return [self._generate([it], [r], sampling, errors, what)[0] for it, r in zip(batch, requests)]

    def _dense(
        self, items: list[_Item], sampling: Sampling, errors: dict[int, str], what: str
    ) -> list[_Item]:
        """Dense captions + QA for items, in batches; returns the items that failed QA."""
        failed = []
        for b in range(0, len(items), self.cfg.batch_size):
            batch = items[b : b + self.cfg.batch_size]
            # important: a seed per clip (and attempt, through sampling.seed), so a sampled caption
            # depends on the clip and the config only, never on its batch or a resume
            reqs = [replace(it.request, seed=derive_seed(sampling.seed, it.clip_id)) for it in batch]
            gens = self._generate(batch, reqs, sampling, errors, what)
            for it, g in zip(batch, gens):
                if g is None:
                    continue
                it.result = check_caption(g.text, g.finished, self.cfg.qa)
                if not it.result.ok:
                    failed.append(it)
        return failed

    def _short(self, items: list[_Item], errors: dict[int, str]) -> None:
        """One-sentence captions from the dense ones (text path, no frames: cheap)."""
        cfg = self.cfg
        sampling = replace(cfg.sampling, max_new_tokens=cfg.short_max_new_tokens)
        for b in range(0, len(items), cfg.batch_size):
            batch = items[b : b + cfg.batch_size]
            reqs = [
                Request(
                    prompts.short_messages(cfg.prompt_version, it.result.text),
                    seed=derive_seed(sampling.seed, it.clip_id, "short"),
                )
                for it in batch
            ]
            gens = self._generate(batch, reqs, sampling, errors, "short")
            for it, g in zip(batch, gens):
                res = check_short(g.text, g.finished, cfg.qa) if g is not None else None
                if res is not None and res.ok:
                    it.short = res.text
                    if res.fixes:
                        it.qa["short_fixes"] = list(res.fixes)
                else:
                    # important: no stand-in (e.g. the dense caption's first sentence): a short caption that
                    # failed is null and caption_qa says why; the clip stays ok, its dense caption passed QA
                    it.short = None
                    it.qa["short_failed"] = (
                        res.reason if res is not None else f"generation failed: {errors.get(it.row)}"
                    )
                errors.pop(it.row, None)  # a failed short generation does not fail the clip

    def _write(
        self, table: pa.Table, good: list[_Item], errors: dict[int, str], clip_scores: dict[int, float | None]
    ) -> pa.Table:
        base = conform(table)  # drops transport columns
        cols = {
            name: base.column(name).to_pylist()
            for name in (
                CAPTION,
                CAPTION_SHORT,
                CAPTION_MODEL,
                PROMPT_VERSION,
                CAPTION_QA,
                CAPTION_CLIP_SCORE,
                CAPTION_PROMPT_TOKENS,
                CAPTION_COMPLETION_TOKENS,
                STATUS,
                ERROR,
                FAILED_STAGE,
                CONFIG_HASH,
                TUBELET_VERSION,
            )
        }
        model_id = getattr(self.vlm, "model_id", "unknown")
        for it in good:
            qa = {"fixes": list(it.result.fixes), **it.qa, "tokens": it.tokens}
            prompt = [t[0] for t in it.tokens.values()]
            cols[CAPTION_PROMPT_TOKENS][it.row] = None if None in prompt else sum(prompt)
            cols[CAPTION_COMPLETION_TOKENS][it.row] = sum(t[1] for t in it.tokens.values())
            for name, v in (
                (CAPTION, it.result.text),
                (CAPTION_SHORT, it.short),
                (CAPTION_MODEL, model_id),
                (PROMPT_VERSION, self.cfg.prompt_version),
                (STATUS, STATUS_OK),
                (CAPTION_QA, json.dumps(qa, sort_keys=True)),
                (CAPTION_CLIP_SCORE, clip_scores.get(it.row)),
            ):
                cols[name][it.row] = v
        for row, reason in errors.items():
            cols[STATUS][row], cols[ERROR][row], cols[FAILED_STAGE][row] = STATUS_ERROR, reason, STAGE
            cols[CAPTION_MODEL][row], cols[PROMPT_VERSION][row] = model_id, self.cfg.prompt_version
        for row in [it.row for it in good] + list(errors):
            cols[CONFIG_HASH][row], cols[TUBELET_VERSION][row] = self.hash, __version__
        return set_columns(base, cols)
