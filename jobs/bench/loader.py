"""Bench: the trainer's streaming loader: host memory against dataset size, and throughput
against `pyarrow.parquet.read_table`.

    python -m jobs.bench loader [--rows 256] [--scales 1 8] [--steps 128] [--shape 16 5 30 53]

For each scale a shard folder of `rows * scale` random rows (the real schema, written by the real
ShardWriter) is read by a fresh process: first `StepLoader` (`ShardSource` + `StreamOrder`, as
`jobs.train` builds them: windows of row groups, read-ahead thread) for `--steps` steps of
`--batch-size` samples, then, in the same process, `pyarrow.parquet.read_table` of every shard
(the baseline: Parquet decode alone, no tensors, everything resident). Reported per scale: the
loader's samples/s, its ratio to read_table's rows/s, the peak RSS while only the loader ran,
and the most row groups the loader held at once. Flat peak RSS from 1x to 8x is the claim.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jobs.bench.shards import make_shards


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(root: str, steps: int, batch_size: int, window: int) -> dict:
    """Runs in a fresh process: the loader first (its peak RSS), then the read_table baseline."""
    import pyarrow.parquet as pq

    from latents.dit.loader import StepLoader
    from latents.samples import ShardSource, StreamOrder

    rss_start = _peak_rss_mb()
    source = ShardSource(root)
    order = StreamOrder(source.units, list(range(len(source.units))), seed=0, window=window)
    loader = StepLoader(
        source,
        order,
        (1, 2, 2),
        batch_size=batch_size,
        step_tokens=None,
        max_tokens=None,
        micro_tokens=None,
        rank=0,
        world=1,
        start_step=0,
        start_pos=0,
        end_step=steps,
    )
    t0 = time.perf_counter()
    samples = 0
    for step in loader:
        samples += sum(len(mb) for mb in step.micro)
    loader_s = time.perf_counter() - t0
    loader.close()
    rss_loader = _peak_rss_mb()
    t0 = time.perf_counter()
    rows = sum(pq.read_table(f).num_rows for f in sorted(Path(root).glob("shard-*.parquet")))
    table_s = time.perf_counter() - t0
    return {
        "samples": samples,
        "loader_samples_per_s": samples / loader_s,
        "read_table_rows_per_s": rows / table_s,
        "ratio_to_read_table": (samples / loader_s) / (rows / table_s),
        "rows_in_dataset": rows,
        "peak_rss_mb_loader": round(rss_loader, 1),
        "rss_mb_at_start": round(rss_start, 1),
        "peak_row_groups_held": loader.peak_units,
        "row_groups": len(source.units),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jobs.bench loader",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--rows", type=int, default=256, help="rows at scale 1")
    p.add_argument(
        "--scales", type=int, nargs="+", default=[1, 8], help="dataset sizes, in multiples of --rows"
    )
    p.add_argument(
        "--steps",
        type=int,
        default=128,
        help="loader steps timed per scale (128 x 16: one pass of the 8x folder; shorter runs time start-up)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="samples per step")
    p.add_argument(
        "--window", type=int, default=4, help="row groups shuffled together (the trainer's window)"
    )
    p.add_argument(
        "--shape",
        type=int,
        nargs=4,
        default=[16, 5, 30, 53],
        metavar=("C", "T", "H", "W"),
        help="latent shape of every row (16x5x30x53: a Wan latent of a 17-frame 240x424 clip)",
    )
    p.add_argument("--out", default=None, help="scratch folder for the shards (default: a temporary one)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: one measurement process
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, a.steps, a.batch_size, a.window)))
        return 0
    if min(a.scales) < 1 or a.rows < 64 or a.steps < 1:
        print(
            "error: --scales must be >= 1, --rows >= 64 (one row group) and --steps >= 1, got "
            f"{a.scales}, {a.rows}, {a.steps}; pass larger values",
            file=sys.stderr,
        )
        return 2
    results = []
    with tempfile.TemporaryDirectory(dir=a.out) as tmp:
        for scale in a.scales:
            root = Path(tmp) / f"x{scale}"
            make_shards(
                root, a.rows * scale, [tuple(a.shape)], text_tokens=64, text_dim=64, rows_per_shard=256
            )
            r = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "jobs.bench",
                    "loader",
                    "--child",
                    str(root),
                    "--steps",
                    str(a.steps),
                    "--batch-size",
                    str(a.batch_size),
                    "--window",
                    str(a.window),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if r.returncode != 0:
                print(r.stderr[-2000:], file=sys.stderr)
                return 1
            res = {"scale": scale, **json.loads(r.stdout.strip().splitlines()[-1])}
            results.append(res)
            print(json.dumps(res), flush=True)
    base = results[0]["peak_rss_mb_loader"]
    print(
        json.dumps({"peak_rss_ratio_largest_to_smallest": round(results[-1]["peak_rss_mb_loader"] / base, 3)})
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
