"""The flags every job shares, their checks, and the one error format.

Every job (split, score, caption, encode, curate, train, sample, report) builds its parser
from these helpers, so the same thing has the same name and meaning everywhere:

  --input / --output     where the job reads / writes; relative paths are resolved against the
                         current directory up front (a URI such as s3://... is kept as given)
  --preset               `smoke` (PRESET_DEFAULT) for every job: tiny random models, runs
                         offline in seconds; real runs say `--preset default`
  --actors / --gpus      model actors and GPUs per actor; a job with several model stages
                         has --{stage}-actors / --{stage}-gpus instead
  --cpus                 CPUs per actor (or per task, for split)
  --device               where models run: auto | cpu | cuda | cuda:N
  --address              Ray cluster (default: RAY_ADDRESS, else a local instance)
  --verbose              Ray's own per-operator logs (quiet by default)

Every bad argument exits 2 before Ray starts with one line, `error: <rule>, got <value>; <fix>`,
and asking for more GPUs or CPUs than this machine (no --address) or the cluster has fails at
once instead of waiting forever.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.errors import UsageError, io_line

PRESET_DEFAULT = "smoke"
DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def fail(rule: str, value: Any, fix: str) -> UsageError:
    """The one error format: `<rule>, got <value>; <fix>` (raise what this returns)."""
    return UsageError(f"{rule}, got {value}; {fix}")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show every option's default, also for options without a help text."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        # important: `is`, not `in`: 0.0 == False, and a GPU count of 0 is a default worth showing
        if (
            "%(default)" in text
            or not action.option_strings
            or d is None
            or d is False
            or d is argparse.SUPPRESS
        ):
            return text
        if d == []:  # a repeatable flag given no times
            return f"{text} (default: none)".strip()
        return f"{text} (default: %(default)s)".strip()


class JobParser(argparse.ArgumentParser):
    """argparse with defaults in --help and a one-line `error: ...` (exit 2) instead of usage + error."""

    def __init__(self, prog: str, description: str | None = None):
        # important: no prefix matching: `--out` must not silently mean `--output` (or a future
        # `--output-format`); every flag is spelled in full
        super().__init__(
            prog=prog, description=description, formatter_class=HelpFormatter, allow_abbrev=False
        )

    def error(self, message: str) -> None:  # type: ignore[override]
        # a type's own rule (finite_float): "argument --cpus: must be ..." reads "--cpus must be ..."
        message = re.sub(r"^argument (-[\w-]+)(?:/-[\w-]+)*: must be ", r"\1 must be ", message)
        sys.stderr.write(f"error: {message}; see `{self.prog} --help`\n")
        sys.exit(2)


def finite_float(text: str) -> float:
    """argparse type of every float flag: a finite number. float() takes "nan", "inf" and "1e999"
    (inf), and nan passes every `<` / `>` check after it (`--max-seconds nan` made every video an
    error row, `--cpus nan` a traceback once Ray started), so they are refused at parse time."""
    value = _number(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(
            f"must be a finite number, got {text!r}; pass e.g. 1 (or leave the flag out for its default)"
        )
    return value


def float_or_inf(text: str) -> float:
    """argparse type of a float flag where inf means "no limit": a number or inf, never nan."""
    value = _number(text)
    if math.isnan(value):
        raise argparse.ArgumentTypeError(
            f"must be a number or inf, got {text!r}; pass e.g. 1 or inf "
            "(or leave the flag out for its default)"
        )
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a number, got {text!r}; pass e.g. 1 (or leave the flag out for its default)"
        ) from None


def add_io(p: argparse.ArgumentParser, input_help: str, output_help: str) -> None:
    p.add_argument("--input", dest="input", required=True, help=input_help)
    p.add_argument("--output", dest="output", required=True, help=output_help)


def add_preset(
    p: argparse.ArgumentParser, choices: Sequence[str], default: str | None = PRESET_DEFAULT
) -> None:
    p.add_argument(
        "--preset",
        choices=list(choices),
        default=default,
        help="smoke: tiny random models, offline; default: real pretrained weights",
    )


def add_resources(
    p: argparse.ArgumentParser,
    stages: Sequence[str] = (),
    *,
    actors: int = 1,
    gpus: float | None = 0.0,
    cpus: float = 1.0,
    actors_help: str = "model actors",
    cpus_help: str = "CPUs per actor",
) -> None:
    """--actors/--gpus (or --{stage}-actors/--{stage}-gpus for each stage) and --cpus;
    gpus=None: a CPU-only job (no --gpus flag)."""
    if not stages:
        p.add_argument("--actors", type=int, default=actors, help=actors_help)
        if gpus is not None:
            p.add_argument("--gpus", type=finite_float, default=gpus, help="GPUs per actor")
    for s in stages:
        p.add_argument(f"--{s}-actors", type=int, default=actors, help=f"{s} model actors")
        p.add_argument(f"--{s}-gpus", type=finite_float, default=gpus, help=f"GPUs per {s} actor")
    p.add_argument("--cpus", type=finite_float, default=cpus, help=cpus_help)


def add_device(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument(
        "--device",
        default=default,
        help="where models run: auto | cpu | cuda | cuda:N (auto: cuda when the job has GPUs)",
    )


def add_ray(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local instance)"
    )
    add_verbose(p)


def add_weights_dir(p: argparse.ArgumentParser) -> None:
    from curate.weights import default_weights_dir

    p.add_argument(
        "--weights-dir",
        default=default_weights_dir(),
        help="folder of downloaded weights, DIR/<hub repo id> (`hf download ID --local-dir DIR/ID`); "
        "default: $TUBELET_WEIGHTS, else the HF cache only",
    )


def add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true", help="show Ray's per-operator logs and HF progress bars")


# --- checks -----------------------------------------------------------------------------


def canonical(path: str) -> str:
    """A URI (scheme://...) as given; a local path made absolute against the current directory,
    so what a job stores (source_uri, run folders) reads the same from any working directory."""
    if "://" in path or path.startswith("synthetic:"):
        return path
    return os.path.abspath(os.path.expanduser(path))  # normalised: "a/../b" -> "/cwd/b"


def check_int(flag: str, value: int, lo: int, fix: str | None = None) -> None:
    if value < lo:
        raise fail(f"{flag} must be >= {lo}", value, fix or f"pass {flag} {max(lo, 1)}")


def check_float(flag: str, value: float, lo: float, *, strict: bool = False, fix: str | None = None) -> None:
    if value < lo or (strict and value == lo):
        rule = f"{flag} must be {'>' if strict else '>='} {lo:g}"
        raise fail(rule, f"{value:g}", fix or f"pass {flag} {max(lo, 1):g}")


def check_device(device: str, gpus: float) -> None:
    """`device` against the GPUs the job's actors ask for (an actor without a GPU cannot use CUDA)."""
    if not DEVICE_RE.match(device):
        raise fail("--device must be auto, cpu, cuda or cuda:N", repr(device), "pass --device auto")
    if device.startswith("cuda") and gpus <= 0:
        raise fail(
            "--device cuda needs GPUs given to the actors", "--gpus 0", "add --gpus 1 (or drop --device)"
        )
    if device == "cpu" and gpus > 0:
        raise fail("--device cpu runs models without GPUs", f"--gpus {gpus:g}", "drop --gpus or --device cpu")


def check_writable_file(flag: str, path: str) -> None:
    """An output file's folder must exist (or be creatable) and be writable, before any work.
    On object storage: the bucket must exist and take a write (a probe object, then deleted)."""
    from curate.io import storage

    if storage.is_remote(path):
        probe = storage.join(storage.parent(path), f".write-test-{os.getpid()}")
        try:
            storage.write_bytes_atomic(b"x", probe)
            storage.delete(probe)
        except (OSError, ValueError) as e:  # missing bucket, bad credentials, unreachable endpoint
            raise fail(
                f"{flag} must be in a writable bucket (it exists, the AWS_* credentials allow writing)",
                f"{path!r} ({io_line(e)})",
                f"create the bucket, fix AWS_ENDPOINT_URL / the credentials or pass another {flag}",
            ) from e
        return
    parent = Path(path).parent
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise fail(
            f"{flag} must be in a writable folder",
            f"{path!r} ({probe} is not writable)",
            f"pass a {flag} under a folder you can write to",
        )


def check_stage_folder(flag: str, path: str, want: str, made_by: str) -> None:
    """A stage's input folder (local or a URI prefix) must hold Parquet parts and be the folder
    that stage reads: `encode --input OUT/scored` would silently encode nothing."""
    from curate.io import storage

    try:
        # a local non-folder has no parts (FileSelector would raise on a file)
        parts = storage.list_files(path, ".parquet") if storage.is_remote(path) or os.path.isdir(path) else []
        sibling = storage.join(storage.parent(path), want)
        misplaced = bool(parts) and storage.basename(path) != want and storage.is_dir(sibling)
    except (OSError, ValueError) as e:  # missing bucket, bad credentials, unreachable endpoint
        raise fail(
            f"{flag} must be a readable folder of Parquet parts written by {made_by} (OUT/{want})",
            f"{path!r} ({io_line(e)})",
            "check the path, the bucket name, AWS_ENDPOINT_URL and the AWS_* credentials",
        ) from e
    if not parts:
        raise fail(
            f"{flag} must be a folder of Parquet parts written by {made_by} (OUT/{want})",
            f"{path!r} (no Parquet parts)",
            f"run {made_by} first or pass OUT/{want}",
        )
    if misplaced:
        raise fail(f"{flag} must be the {want} folder written by {made_by}", repr(path), f"pass {sibling}")


@dataclass(frozen=True)
class Need:
    """What the job's actors and tasks ask for at the same time."""

    gpus: float = 0.0  # all actors together
    cpus: float = 0.0  # all actors together
    max_cpus_one: float = 0.0  # the largest single ask: it must fit on one machine
    what: str = "the job"
    fix: str = "lower the --*actors, --*gpus or --cpus flags"


def local_capacity(count_gpus: bool = True) -> tuple[float, float]:
    """(GPUs, CPUs) of this machine, without starting Ray (GPUs counted only when asked: torch
    takes a second or two to import)."""
    gpus = 0
    if count_gpus and os.environ.get("CUDA_VISIBLE_DEVICES", None) != "":
        try:
            import torch

            gpus = torch.cuda.device_count()
        except ImportError:
            gpus = 0
    return float(gpus), float(os.cpu_count() or 1)


def check_need(need: Need, capacity: tuple[float, float], where: str) -> None:
    gpus, cpus = capacity
    if need.gpus > gpus:
        raise fail(
            f"{need.what} asks for {need.gpus:g} GPU(s) in all and {where} must have them",
            f"{gpus:g} GPU(s)",
            f"{need.fix}, ask for 0 GPUs to run on CPU, or run on GPU nodes",
        )
    if need.max_cpus_one > cpus or need.cpus > cpus:
        ask = round(max(need.max_cpus_one, need.cpus), 2)
        raise fail(
            f"{need.what} asks for {ask:g} CPU(s) and {where} must have them", f"{cpus:g} CPU(s)", need.fix
        )


def check_local(need: Need, address: str | None) -> None:
    """Before Ray starts: a local run must fit this machine (a cluster is checked after connecting)."""
    if address or os.environ.get("RAY_ADDRESS"):
        return
    check_need(need, local_capacity(count_gpus=need.gpus > 0), "this machine (no --address)")


def check_cluster(need: Need) -> None:
    """Right after connecting: actors asking for more than the cluster has wait forever instead of failing."""
    import ray

    res = ray.cluster_resources()
    check_need(need, (res.get("GPU", 0.0), res.get("CPU", 0.0)), "the Ray cluster")


def quiet_logs(verbose: bool) -> None:
    """Quiet by default: progress bars and the job's summary; Ray's per-operator logs with --verbose."""
    level = logging.INFO if verbose else logging.ERROR  # quiet: not even Ray's deprecation notices
    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(level)
    if verbose:
        return
    # HF's "Loading weights" / download bars and notices, also in libraries imported later.
    # not RAY_BACKEND_LOG_LEVEL: setting it makes every Ray process print a line saying so
    for var, value in (
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
        ("TRANSFORMERS_VERBOSITY", "error"),
        ("DIFFUSERS_VERBOSITY", "error"),
    ):
        os.environ.setdefault(var, value)
    for lib in ("transformers", "diffusers"):  # already imported: their bars were read at import
        if lib in sys.modules:
            logs = importlib.import_module(f"{lib}.utils.logging")
            logs.disable_progress_bar()
            logs.set_verbosity_error()
    if "huggingface_hub" in sys.modules:
        importlib.import_module("huggingface_hub.utils").disable_progress_bars()


def run_cli(fn: Callable[[], int | None]) -> int:
    """Run a job's body; a UsageError (bad argument, found before or after parsing) exits 2 with one line.

    An infrastructure failure (a full disk, object storage unreachable after its retries, a lost Ray
    cluster; `curate.io.retry.infrastructure_failure`) exits 1 with one line naming the cause: finished
    parts keep their markers, so the rerun resumes. Any other error keeps its traceback (a bug)."""
    from curate.io import retry

    try:
        retry.policy()  # a bad TUBELET_IO_* variable: exit 2 now, not in a worker mid-run
        return fn() or 0
    except UsageError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    except KeyboardInterrupt:
        return interrupted()
    except Exception as e:
        line = retry.infrastructure_failure(e)
        if line is None:
            raise
        sys.stderr.write(f"error: {line}\n")
        sys.stderr.flush()
        return 1


INTERRUPTED = "interrupted; rerun to resume"


def interrupted() -> int:
    """Ctrl-C: one line and exit 130 (128 + SIGINT); finished parts keep their markers, so a rerun resumes.

    Later Ctrl-C's and the interpreter's exit hooks (Ray's shutdown) stay silent: the line is the last word.
    """
    import os
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stderr.write(f"{INTERRUPTED}\n")
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(130)  # important: no atexit Ray shutdown printing worker tracebacks after the line


# --- caption engine ---------------------------------------------------------------------------


def add_caption_engine(p: argparse.ArgumentParser, model_flag: bool = False) -> None:
    """--engine and the OpenAI-compatible server's flags (jobs.caption, jobs.curate, jobs.sample)."""
    p.add_argument(
        "--engine",
        choices=["transformers", "openai"],
        default=None,
        help="caption engine: transformers (generate in the actors; the preset's) or openai "
        "(any OpenAI-compatible chat-completions server: vLLM, SGLang, transformers serve, hosted)",
    )
    if model_flag:
        p.add_argument(
            "--model",
            default=None,
            help="the VLM: with --engine openai the model's name on the server; "
            "else a hub id, local folder or smoke:<family> (default: the preset's)",
        )
    p.add_argument(
        "--base-url",
        default=None,
        help="--engine openai: the server's API root, e.g. http://127.0.0.1:8000/v1",
    )
    p.add_argument(
        "--api-key-env",
        default=None,
        metavar="VAR",
        help="--engine openai: NAME of the environment variable that holds the API key (never the key)",
    )
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        help="--engine openai: requests open at once per actor (default 16)",
    )
    p.add_argument(
        "--frames",
        choices=["auto", "video", "images"],
        default=None,
        help="--engine openai: video_url (one mp4) or image_url (one JPEG per frame); auto: video where "
        "the server takes it",
    )
    p.add_argument(
        "--request-timeout",
        type=finite_float,
        default=None,
        help="--engine openai: seconds per request (300)",
    )
    p.add_argument(
        "--request-retries",
        type=int,
        default=None,
        help="--engine openai: extra tries on 429/5xx/connection errors, with exponential backoff (4)",
    )


def caption_engine_config(a: argparse.Namespace, cap: Any) -> Any:
    """A CaptionConfig (or UpsampleConfig) with the --engine flags applied; checks that need no server."""
    from dataclasses import replace

    if getattr(a, "model", None):
        cap = replace(cap, model=a.model)
    server_flags = [
        f
        for f, v in (
            ("--base-url", a.base_url),
            ("--api-key-env", a.api_key_env),
            ("--max-in-flight", a.max_in_flight),
            ("--frames", a.frames),
            ("--request-timeout", a.request_timeout),
            ("--request-retries", a.request_retries),
        )
        if v is not None
    ]
    if a.engine:
        cap = replace(cap, engine=a.engine)
    if cap.engine != "openai":
        if server_flags:
            raise fail(
                f"{server_flags[0]} needs --engine openai", f"--engine {cap.engine}", "add --engine openai"
            )
        return cap
    if not a.base_url:
        raise fail("--engine openai needs --base-url", "none", "pass --base-url http://HOST:PORT/v1")
    if not re.match(r"^https?://[^\s/]+", a.base_url):
        raise fail(
            "--base-url must be an http(s) URL", repr(a.base_url), "pass e.g. http://127.0.0.1:8000/v1"
        )
    if "@" in a.base_url.split("//", 1)[1].split("/", 1)[0]:
        raise fail(
            "--base-url must not carry credentials",
            "a user:password@ URL",
            "put the key in an environment variable and pass --api-key-env VAR",
        )
    if a.api_key_env is not None and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", a.api_key_env):
        raise fail(
            "--api-key-env must be the NAME of an environment variable (letters, digits, _)",
            "something else (not shown: it may be the key)",
            "export VAR=<key> and pass --api-key-env VAR",
        )
    if a.max_in_flight is not None:
        check_int("--max-in-flight", a.max_in_flight, 1)
    if a.request_retries is not None:
        check_int("--request-retries", a.request_retries, 0)
    if a.request_timeout is not None:
        check_float("--request-timeout", a.request_timeout, 0, strict=True, fix="pass --request-timeout 300")
    server = replace(cap.openai, base_url=a.base_url, api_key_env=a.api_key_env)
    for name, v in (
        ("max_in_flight", a.max_in_flight),
        ("frames", a.frames),
        ("timeout_s", a.request_timeout),
        ("max_retries", a.request_retries),
    ):
        if v is not None:
            server = replace(server, **{name: v})
    if getattr(a, "model", None) is None and cap.model.startswith("smoke:"):
        raise fail(
            "--engine openai needs --model, the model's name on the server",
            repr(cap.model),
            "pass --model NAME (GET BASE_URL/models lists them)",
        )
    return replace(cap, openai=server)
