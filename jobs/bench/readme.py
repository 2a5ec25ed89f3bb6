"""`python -m jobs.bench readme`: every command of the README's ```bash blocks, run on a fresh
`git clone` of this checkout, as a table of exit codes and wall times; and the README's demo
output checked against what `python -m jobs.demo` prints there.

The clone runs with this interpreter's venv (nothing is installed), `PYTHONPATH` = the clone,
`HF_HUB_OFFLINE=1`, `RAY_AUTH_MODE=disabled`. The README's placeholders are made real:
`path/to/videos` and `/data/raw` are generated samples (`jobs.demo.make_samples`), `OUT` one
run folder filled by the stage commands in README order (`jobs.curate` writes its own),
`RUN` the training run, `in.mp4` a sample video, `s3://bucket` a local moto S3 server, the
caption server a `transformers serve` stand-in with the smoke VLM. A command that cannot
run here is a row saying why (network, cluster, GPU server, the test suite).

Expected exits: `--preset default` refuses before Ray (exit 2, the `hf download` lines: no
weights here), so it also runs with `--preset smoke`; GPUs beyond this machine's refuse
(exit 2), so the command also runs without its GPU flags (and with `--cpus` lowered where its
actors would not fit this machine's CPUs). Exit 0 only when every run got its expected exit
and the demo's numbers match the README.

    python -m jobs.bench readme                  # ~15 min on 2 CPUs
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GIT = shutil.which("git") or "git"
GPU_FLAGS = ("--gpus", "--score-gpus", "--caption-gpus", "--encode-gpus")
WEIGHT_JOBS = {"curate", "score", "caption", "encode", "check", "sample"}  # `default` needs weights
CLUSTER_TEST = "tests/test_curate_e2e.py"
CLUSTER_TEST_NAME = "test_curate_outputs_follow_the_contract"  # `ray job submit` to a 127.0.0.1 head
DEMO_NUMBERS = re.compile(
    r"demo: curated (\d+) videos -> (\d+) clips, (\d+) kept, (\d+) encoded into (\d+) shard\(s\), "
    r"round-trip PSNR ([\d.]+|None) dB"
)
REFUSED_GPU = "GPU(s)"  # in the line of a job asking for more GPUs than the machine has
REFUSED_WEIGHTS = "hf download"  # in the line of a `default` job without its weights
WHY = {REFUSED_GPU: "refuses: GPUs", REFUSED_WEIGHTS: "refuses: weights, `hf download`"}
SERVER_KEY_ENV = "TUBELET_CAPTION_KEY"  # the README's caption-server variable


@dataclass(frozen=True)
class Command:
    """One command of a README ```bash block: its first line number, text without its comment."""

    line: int
    text: str
    section: str  # the heading above the block

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text)


@dataclass(frozen=True)
class Run:
    label: str  # how it runs, for the table ("as written", "--preset smoke", ...)
    argv: list[str]
    expect: int
    message: str | None = None  # text the output must hold (a refusal's reason)
    s3: bool = False  # needs the local S3 server's variables


@dataclass(frozen=True)
class Plan:
    note: str | None  # why the line itself is not run (None: its first run is the line)
    runs: list[Run] = field(default_factory=list)


@dataclass(frozen=True)
class Places:
    """What the README's placeholders stand for here, and this machine's GPUs and CPUs."""

    videos: str
    out: str
    curate_out: str
    cluster_out: str
    run: str
    in_mp4: str
    server_url: str = "http://127.0.0.1:8000/v1"
    server_model: str = "qwen2.5-vl-7b"
    gpus: float = 0.0
    cpus: float = 2.0

    def mapping(self, job: str | None) -> dict[str, str]:
        return {
            "path/to/videos": self.videos,
            "/data/raw": self.videos,
            "/data/out": self.cluster_out,
            "OUT": self.curate_out if job == "curate" else self.out,
            "RUN": self.run,
            "in.mp4": self.in_mp4,
            "http://127.0.0.1:8000/v1": self.server_url,
            "qwen2.5-vl-7b": self.server_model,
        }


def _strip_comment(text: str) -> str:
    """`text` without a trailing `# ...` comment (a `#` inside quotes stays)."""
    for m in re.finditer(r"\s#", text):
        try:
            shlex.split(text[: m.start()])
        except ValueError:  # the `#` is inside an open quote
            continue
        return text[: m.start()].rstrip()
    return text.rstrip()


def _complete(text: str) -> bool:
    """A logical shell line ends here: no `\\` continuation, no open quote."""
    if text.endswith("\\"):
        return False
    try:
        shlex.split(text, comments=True)
    except ValueError:
        return False
    return True


def _join(pending: str, raw: str) -> str:
    """The next README line added: after a `\\` with a space, inside an open quote with its newline
    (a `python -c '...'` spanning lines)."""
    if not pending:
        return raw.strip()
    if pending.endswith("\\"):
        return pending[:-1].rstrip() + " " + raw.strip()
    return pending + "\n" + raw.rstrip()


def extract(readme: str) -> list[Command]:
    """Every command of the ```bash blocks, `\\` continuations and multi-line quotes joined,
    comment lines and blank lines skipped."""
    commands: list[Command] = []
    section, in_bash, in_other, pending, start = "", False, False, "", 0
    for n, raw in enumerate(readme.splitlines(), 1):
        line = raw.strip()
        if line.startswith("```"):
            if in_bash or in_other:
                in_bash = in_other = False
            elif line == "```bash":
                in_bash = True
            else:
                in_other = True
            continue
        if not (in_bash or in_other) and line.startswith("#"):
            section = line.lstrip("#").strip()
        if not in_bash or (not pending and (not line or line.startswith("#"))):
            continue
        if not pending:
            start = n
        pending = _join(pending, raw)
        if _complete(pending):
            commands.append(Command(start, _strip_comment(pending.strip()), section))
            pending = ""
    return commands


def _env_prefix(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """(`VAR=value` assignments before the program, the program's argv)."""
    env = {}
    while argv and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0]):
        k, _, v = argv[0].partition("=")
        env[k] = v
        argv = argv[1:]
    return env, argv


def _program(argv: list[str]) -> str:
    return Path(argv[0]).name if argv else ""


def job_of(argv: list[str]) -> str | None:
    """`jobs.<name>` of a `python -m jobs.<name> ...` argv, else None."""
    if _program(argv) in ("python", "python3") and argv[1:2] == ["-m"] and len(argv) > 2:
        mod = argv[2]
        return mod.removeprefix("jobs.") if mod.startswith("jobs.") else None
    return None


def _flag(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.partition("=")[2]
    return None


def _without(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """argv with the flags `names` and their values dropped."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in names:
            skip = True
        elif not a.startswith(tuple(n + "=" for n in names)):
            out.append(a)
    return out


def _with(argv: list[str], name: str, value: str) -> list[str]:
    return [*_without(argv, (name,)), name, value]


def gpus_asked(argv: list[str]) -> float:
    """GPUs in all: `--X-gpus` times `--X-actors` (1 when not given), `--gpus` times `--actors`."""
    total = 0.0
    for f in GPU_FLAGS:
        g = _flag(argv, f)
        if g is not None:
            actors = _flag(argv, f.replace("gpus", "actors"))
            total += float(g) * float(actors or 1)
    return total


def substitute(argv: list[str], mapping: dict[str, str]) -> list[str]:
    """Each argument naming a placeholder (alone or as a path's first part) made real."""
    out = []
    for a in argv:
        for key, real in mapping.items():
            if a == key or a.startswith(key.rstrip("/") + "/"):
                a = real + a[len(key) :]
                break
        out.append(a)
    return out


def _fit_here(argv: list[str], places: Places) -> list[str]:
    """GPU flags dropped, and `--cpus` lowered when `--actors N` (1 CPU each, plus 1 for the
    decode tasks) would ask for more CPUs than this machine has: the job refuses that too."""
    argv = _without(argv, GPU_FLAGS)
    actors = int(_flag(argv, "--actors") or 1)
    if actors > 1 and actors + 1 > places.cpus:
        each = max(0.25, math.floor((places.cpus - 1) / actors * 4) / 4)
        argv = _with(argv, "--cpus", f"{each:g}")
    return argv


def _job_runs(argv: list[str], job: str, places: Places) -> list[Run]:
    """The line as written, then what runs here: without its GPU flags, with `--preset smoke`."""
    argv = [sys.executable, *argv[1:]]
    default = _flag(argv, "--preset") == "default" and job in WEIGHT_JOBS
    refuse_gpu = gpus_asked(argv) > places.gpus
    s3 = any(a.startswith("s3://") for a in argv)
    expect = (2, REFUSED_GPU) if refuse_gpu else (2, REFUSED_WEIGHTS) if default else (0, None)
    runs = [Run("as written", argv, *expect, s3=s3)]
    fitted = _fit_here(argv, places)
    lowered = _flag(fitted, "--cpus") != _flag(argv, "--cpus")
    cpu_note = f", --cpus {_flag(fitted, '--cpus')} (fits {places.cpus:g} CPUs)" if lowered else ""
    if refuse_gpu and default:
        runs.append(Run(f"GPU flags dropped{cpu_note}", fitted, 2, REFUSED_WEIGHTS, s3))
    if refuse_gpu or default:
        label = "GPU flags dropped, " if refuse_gpu else ""
        runs.append(Run(f"{label}--preset smoke{cpu_note}", _with(fitted, "--preset", "smoke"), 0, None, s3))
    return runs


def cluster_note(repo: Path) -> str:
    test = repo / CLUSTER_TEST
    if not test.is_file() or f"def {CLUSTER_TEST_NAME}" not in test.read_text():
        return f"not run: cluster recipe; MISSING its test {CLUSTER_TEST}::{CLUSTER_TEST_NAME}"
    return (
        f"not run: cluster recipe, tested by {CLUSTER_TEST} "
        f"({CLUSTER_TEST_NAME}: `ray job submit`, 127.0.0.1 head)"
    )


def _shell_note(cmd: Command) -> str:
    """Why a line that only sets shell variables is not run, and what stands in for it."""
    if "AWS_ENDPOINT_URL" in cmd.text:
        return "not run: sets the S3 variables; this run points them at a local moto S3 server"
    if SERVER_KEY_ENV in cmd.text:
        return f"not run: sets the server's key; this run puts a random one in ${SERVER_KEY_ENV}"
    if cmd.section.startswith("On a cluster"):
        return "not run: the cluster recipe's shell set-up"
    return "not run: sets shell variables for the lines below"


def plan(cmd: Command, places: Places, repo: Path = REPO) -> Plan:
    """How one README command is checked here."""
    env, argv = _env_prefix(cmd.argv)
    prog, words = _program(argv), set(cmd.argv)
    job = job_of(argv)
    if cmd.text == "make demo":
        demo = [sys.executable, "-m", "jobs.demo", "--output", "demo-out"]
        return Plan(None, [Run("python -m jobs.demo --output demo-out", demo, 0)])
    if cmd.text == "make test" or (job is None and argv[1:3] == ["-m", "pytest"]):
        return Plan("not run here: the suite (CI runs it)")
    if prog in ("hf", "curl", "pip") or "curl" in words:
        return Plan("not run: needs the network")
    if prog in ("python", "python3") and argv[1:3] == ["-m", "venv"]:
        return Plan("not run: set-up (this run uses the interpreter's venv)")
    if prog == "vllm" or any(a.startswith("sglang") for a in argv[1:3]):
        return Plan("not run: needs a GPU server")
    if prog == "ray" or prog == "kill" or "RAY_ADDRESS" in env:
        inner = argv[argv.index("--") + 1 :] if "--" in argv else argv
        ijob = job_of(inner)
        # the job part, run here without the cluster: its flags are checked, it refuses before Ray
        runs = [] if ijob is None else _job_runs(substitute(inner, places.mapping(ijob)), ijob, places)[:1]
        return Plan(cluster_note(repo), [replace(r, label="its job part, here (no cluster)") for r in runs])
    if not argv or prog in ("export", "read"):
        return Plan(_shell_note(cmd))
    if job is None:
        return Plan(f"not run: not a tubelet command ({prog})")
    if "..." in argv:
        return Plan("not run: a template (`...` stands for the flags above)")
    argv = substitute(argv, places.mapping(job))
    if job == "train" and _flag(argv, "--preset") == "default":
        smoke = _with([sys.executable, *argv[1:]], "--preset", "smoke")
        note = "not run as written: `default` trains DiT-B, 524,288 tokens a step, a GPU job"
        return Plan(note, [Run("--preset smoke", smoke, 0)])
    return Plan(None, _job_runs(argv, job, places))


@dataclass
class Result:
    rc: int | None  # None: timed out
    wall: float
    output: str

    def error_line(self) -> str:
        lines = [x for x in self.output.splitlines() if x.strip()]
        errors = [x for x in lines if x.startswith("error")]
        return (errors or lines or ["(no output)"])[-1][:400]


def execute(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> Result:
    """Run in its own process group, so a timeout also ends the Ray processes it started."""
    t = time.perf_counter()
    p = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = p.communicate(timeout=timeout)
        rc: int | None = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, rc = p.communicate()[0], None
    except BaseException:  # Ctrl-C: no Ray process of the run is left behind
        os.killpg(p.pid, signal.SIGKILL)
        raise
    return Result(rc, time.perf_counter() - t, out)


def demo_lines(readme: str) -> list[str]:
    """The README's sample-output block of the demo: the lines from `demo: curated` on."""
    lines = readme.splitlines()
    start = next((i for i, x in enumerate(lines) if x.startswith("demo: curated")), None)
    if start is None:
        return []
    block = []
    for x in lines[start:]:
        if x.startswith("```"):
            break
        block.append(x)
    return block


def _relative(line: str, clone: Path) -> str:
    """The demo prints absolute paths; the README shows them relative to the checkout."""
    for root in {str(clone.resolve()), str(clone)}:
        line = line.replace(root + "/", "")
    return line


def check_demo(readme: str, output: str, clone: Path) -> list[str]:
    """MISMATCH lines: the numbers of `demo: curated ...`, then each other README line against
    the actual line with the same label (paths relative to the clone; a line ending in `...`
    is a prefix)."""
    want = demo_lines(readme)
    if not want:
        return ["MISMATCH: the README has no `demo: curated ...` block"]
    got = [_relative(x, clone) for x in output.splitlines()]
    problems = []
    w = DEMO_NUMBERS.search(want[0])
    g = next((m for x in got if (m := DEMO_NUMBERS.search(x))), None)
    if w is None or g is None or w.groups() != g.groups():
        actual = g.group(0) if g else "(no `demo: curated` line in the demo's output)"
        problems.append(f"MISMATCH demo numbers: README {want[0]!r}, actual {actual!r}")
    for line in want[1:]:
        prefix = line.removesuffix("...")
        label = line.split("->")[0] if "->" in line else prefix
        actual = next((x for x in got if x.startswith(label)), None)
        if actual is None or not (actual.startswith(prefix) if prefix != line else actual == line):
            problems.append(f"MISMATCH demo output: README {line!r}, actual {actual!r}")
    return problems


def _cell(text: str, width: int = 100) -> str:
    text = " ".join(text.split())
    text = text if len(text) <= width else text[: width - 1] + "…"
    return text.replace("|", "\\|")


@dataclass
class Services:
    """The local S3 server and the caption-server stand-in, started when a row first needs them."""

    work: Path
    stack: contextlib.ExitStack
    videos: Path
    s3_env: dict[str, str] | None = None

    def s3(self) -> dict[str, str]:
        if self.s3_env is None:
            if str(REPO) not in sys.path:  # tests/ is not installed: the checkout's own helper
                sys.path.insert(0, str(REPO))
            from tests.s3server import s3_server

            server = self.stack.enter_context(s3_server(self.work))
            server.make_bucket("bucket")
            uris = server.upload_dir(self.videos, "s3://bucket/raw")
            server.client().put_object(Bucket="bucket", Key="lists/videos.txt", Body="\n".join(uris) + "\n")
            self.s3_env = server.env
        return self.s3_env


def start_caption_server(work: Path, key: str, stack: contextlib.ExitStack) -> tuple[str, str]:
    """(API root, model name) of `transformers serve` with the smoke VLM on a free port."""
    from captioner.vlm import build_smoke_vlm
    from jobs.bench import openai_server

    model = build_smoke_vlm(work / "smoke-vlm")
    server = openai_server.start_server(model, work / "serve.log", SERVER_KEY_ENV, key)
    stack.callback(server.stop)
    return server.url, str(model)


def _base_env(clone: Path, key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # each job starts its own Ray
    env.update(HF_HUB_OFFLINE="1", RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1", PYTHONPATH=str(clone))
    env[SERVER_KEY_ENV] = key
    return env


def clone_here(work: Path) -> tuple[Path, str]:
    """A fresh clone of this checkout's HEAD (committed files only) and its commit."""
    head = subprocess.run(
        [GIT, "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    clone = work / "clone"
    subprocess.run([GIT, "clone", "--quiet", str(REPO), str(clone)], check=True)
    subprocess.run([GIT, "-C", str(clone), "checkout", "--quiet", head], check=True)
    return clone, head


def _tag(num: str, k: int, noted: bool) -> str:
    """Row number of run `k` of README command `num`: the command's own row, then 3a, 3b..."""
    index = k if noted else k - 1
    return num if index < 0 else f"{num}{'abcdefgh'[index]}"


@dataclass
class Tally:
    table: list[list[str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    ran: int = 0
    ok: int = 0
    skipped: int = 0
    demo_output: str | None = None


def check_plan(num: str, cmd: Command, p: Plan, run_one, tally: Tally) -> None:
    """Run the plan's runs (`run_one(run) -> Result`) and add its rows to `tally`."""
    cells = [num, _cell(cmd.text)]
    if p.note:
        tally.skipped += 1
        tally.table.append([*cells, _cell(p.note, 200), "-", "-", "-"])
        if "MISSING" in p.note:
            tally.problems.append(f"#{num}: {p.note}")
    for k, run in enumerate(p.runs):
        tag = _tag(num, k, bool(p.note))
        print(f"[{tag}] {run.label}: {shlex.join(run.argv[1:])[:300]}", flush=True)
        res = run_one(run)
        good = res.rc == run.expect and (run.message is None or run.message in res.output)
        tally.ran, tally.ok = tally.ran + 1, tally.ok + good
        print(f"[{tag}] exit {res.rc} (expected {run.expect}) in {res.wall:.1f} s", flush=True)
        if not good:
            tally.problems.append(f"UNEXPECTED #{tag} ({run.label}): exit {res.rc}: {res.error_line()}")
        if run.argv[2:3] == ["jobs.demo"]:
            tally.demo_output = res.output
        shown = cells if tag == num else [tag, ""]
        want = f"{run.expect}" + (f" ({WHY[run.message]})" if run.message else "")
        exit_cell = "timeout" if res.rc is None else str(res.rc)
        tally.table.append([*shown, _cell(run.label, 80), exit_cell, want, f"{res.wall:.1f}"])


def print_table(tally: Tally, commands: int, wall: float) -> None:
    print()
    print("| # | command (as in README) | run as | exit | expected | wall s |")
    print("|---|---|---|---|---|---|")
    for row in tally.table:
        print("| " + " | ".join(row) + " |")
    print()
    for line in tally.problems:
        print(line)
    print(
        f"ran {tally.ran}, as expected {tally.ok}, not run {tally.skipped} "
        f"(of {commands} README commands), {wall:.0f} s in all"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m jobs.bench readme",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument(
        "--keep",
        default=None,
        metavar="DIR",
        help="keep the clone and every output in DIR (none: a temporary folder, removed at the end)",
    )
    ap.add_argument(
        "--timeout", type=float, default=600.0, help="seconds one command may run before it is killed"
    )
    a = ap.parse_args(argv)
    if not a.timeout > 0:
        print(f"error: --timeout must be > 0, got {a.timeout}; pass --timeout 600", file=sys.stderr)
        return 2
    from jobs.demo import make_samples
    from jobs.runtime.flags import local_capacity

    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        work = Path(a.keep).resolve() if a.keep else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if (work / "clone").exists():  # its outputs would be resumed, not made: not a fresh run
            print(
                f"error: --keep must be a folder without a clone, got {str(work)!r}; pass a new one",
                file=sys.stderr,
            )
            return 2
        work.mkdir(parents=True, exist_ok=True)
        clone, head = clone_here(work)
        videos = work / "videos"
        samples = make_samples(videos)
        key = secrets.token_hex(16)  # the caption server's key: in environments only, never printed
        env = _base_env(clone, key)
        where = execute([sys.executable, "-c", "import jobs; print(jobs.__file__)"], clone, env, 60)
        if not where.output.strip().startswith(str(clone)):
            print(f"error: the clone's code must be what runs, got {where.output.strip()!r}", file=sys.stderr)
            return 1
        readme = (clone / "README.md").read_text()
        commands = extract(readme)
        gpus, cpus = local_capacity()
        places = Places(
            videos=str(videos),
            out=str(work / "out"),
            curate_out=str(work / "out-curate"),
            cluster_out=str(work / "out-cluster"),
            run=str(work / "run"),
            in_mp4=str(samples[1]),
            gpus=gpus,
            cpus=cpus,
        )
        if any("--engine" in c.argv and "..." not in c.argv for c in commands):
            url, model = start_caption_server(work, key, stack)
            places = replace(places, server_url=url, server_model=model)
        services = Services(work, stack, videos)
        print(
            f"readme: clone of {head[:12]} in {clone}; {len(commands)} commands; "
            f"{gpus:g} GPU(s), {cpus:g} CPU(s)"
        )
        print("readme: placeholders: " + ", ".join(f"{k} -> {v}" for k, v in places.mapping(None).items()))
        print(f"readme: jobs.curate's OUT -> {places.curate_out}", flush=True)

        def run_one(run: Run) -> Result:
            return execute(run.argv, clone, {**env, **services.s3()} if run.s3 else env, a.timeout)

        tally = Tally()
        for i, cmd in enumerate(commands, 1):
            check_plan(str(i), cmd, plan(cmd, places, clone), run_one, tally)
        if tally.demo_output is None:
            tally.problems.append("MISMATCH: no `make demo` in the README, so no demo output to check")
        else:
            demo = check_demo(readme, tally.demo_output, clone)
            tally.problems += demo
            print(
                "readme: demo output DIFFERS from the README"
                if demo
                else "readme: demo output matches the README"
            )
        print_table(tally, len(commands), time.perf_counter() - t0)
    return 0 if tally.ok == tally.ran and not tally.problems else 1


if __name__ == "__main__":
    sys.exit(main())
