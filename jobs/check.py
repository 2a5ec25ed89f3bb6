"""`python -m jobs.check --preset default [--weights-dir DIR]`: are a preset's weights all here?

Looks at files only (nothing is loaded, nothing downloads): every model of the preset in
`DIR/<hub repo id>` (as `hf download REPO --local-dir DIR/REPO` writes it) or in the Hugging Face
cache (HF_HOME). Prints one line per model and, for each missing one, the exact line that
fetches it. Exit 0: all present; exit 2: something is missing (the jobs refuse to start then,
with the same list, before Ray or any actor starts).
"""

from __future__ import annotations

import sys

from curate.weights import expand, report
from jobs.runtime import flags
from jobs.runtime.presets import PRESETS
from latents.weights import stage_weights, with_weights_dir

STAGES = ("score", "caption", "upsample", "encode")


def preset_weights(name: str, weights_dir: str | None, stages: tuple[str, ...] = STAGES) -> list:
    preset = with_weights_dir(PRESETS[name], weights_dir)
    return stage_weights(**{s: getattr(preset, s) for s in stages})


def main(argv: list[str] | None = None) -> int:
    p = flags.JobParser("python -m jobs.check", __doc__.split("\n")[0])
    # important: the one job whose preset defaults to `default`: it checks real weights; smoke needs none
    flags.add_preset(p, sorted(PRESETS), default="default")
    flags.add_weights_dir(p)
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    a = p.parse_args(argv)
    stages = tuple(s for s in a.stages.split(",") if s)
    if not set(stages) <= set(STAGES):
        p.error(
            f"--stages must be a subset of {','.join(STAGES)}, got {a.stages!r}; e.g. --stages score,caption"
        )
    wd = expand(a.weights_dir)
    lines, absent = report(preset_weights(a.preset, wd, stages), wd)
    print(f"preset {a.preset}: {len(lines)} model(s), weights dir {wd or '-'} then the HF cache")
    for line in lines:
        print("  " + line)
    if not lines:
        print("  (no downloaded weights needed: models are built locally)")
    if absent:
        print(f"{len(absent)} missing; on a connected machine run:", file=sys.stderr)
        for w in absent:
            print(f"  {w.download_line(wd)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from jobs.runtime.flags import run_cli

    sys.exit(run_cli(main))  # Ctrl-C: one line, exit 130
