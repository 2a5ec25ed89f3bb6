"""`python -m jobs.bench NAME [options]`: benchmarks, each a ratio against a baseline run in
the same process (never a timed assert). NAME picks the module `jobs/bench/<name>.py`;
adding a benchmark is one module with `main(argv) -> int` plus one line in BENCHES."""

from __future__ import annotations

import importlib
import sys

BENCHES = {
    "split": "jobs.bench.split",
    "score": "jobs.bench.score",
    "caption": "jobs.bench.caption",
    "shards": "jobs.bench.shards",
    "train": "jobs.bench.train",
    "curate": "jobs.bench.curate",
    "detect": "jobs.bench.detect",
    "transitions": "jobs.bench.transitions",  # content and hybrid on seeded composites
    "scale": "jobs.bench.scale",
    "split_s3": "jobs.bench.split_s3",  # also `split --s3`
    "frames": "jobs.bench.frames",  # a table of the frame-model scores per video, no baseline
    # the trainer's streaming loader: RSS vs dataset size, rows/s vs read_table
    "loader": "jobs.bench.loader",
    "kill": "jobs.bench.kill",  # kill -9 of curate at N points + rerun: byte-identical captions and shards
    "decode_once": "jobs.bench.decode_once",  # phase 2 CPU step: one decode per clip vs the stage jobs' two
    # every README command on a fresh clone: exit codes, wall times, demo output
    "readme": "jobs.bench.readme",
}


def cli(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        print(
            "\nbenchmarks:",
            ", ".join(BENCHES),
            "\n`python -m jobs.bench NAME --help` lists a benchmark's options",
        )
        return 0
    if not argv or argv[0] not in BENCHES:
        seen = argv[0] if argv else "nothing"
        print(
            f"error: the benchmark name must be one of {sorted(BENCHES)}, got {seen!r}; "
            "e.g. python -m jobs.bench split",
            file=sys.stderr,
        )
        return 2
    if argv[0] == "split" and "--s3" in argv[1:]:  # object storage vs local disk: its own module
        argv = ["split_s3", *(a for a in argv[1:] if a != "--s3")]
    try:
        module = importlib.import_module(BENCHES[argv[0]])
    except ModuleNotFoundError as e:
        print(f"error: benchmark {argv[0]!r} is not available in this build ({e})", file=sys.stderr)
        return 2
    return module.main(argv[1:])
