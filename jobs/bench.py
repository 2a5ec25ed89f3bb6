"""`python -m jobs.bench NAME [options]`: benchmarks, each a ratio against a baseline run in
the same process (never a timed assert). NAME picks `jobs/bench_<name>.py`."""

from __future__ import annotations

import importlib
import sys

BENCHES = {
    "split": "jobs.bench_split",
    "score": "jobs.bench_score",
    "caption": "jobs.bench_caption",
    "shards": "jobs.bench_shards",
    "train": "jobs.bench_train",
    "curate": "jobs.bench_curate",
    "detect": "jobs.bench_detect",
    "scale": "jobs.bench_scale",
}


def cli(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in BENCHES:
        seen = argv[0] if argv else "nothing"
        print(f"error: the benchmark name must be one of {sorted(BENCHES)}, got {seen!r}; "
              "e.g. python -m jobs.bench split", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(BENCHES[argv[0]])
    except ModuleNotFoundError as e:
        print(f"error: benchmark {argv[0]!r} is not available in this build ({e})", file=sys.stderr)
        return 2
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(cli())
