"""jobs.bench readme's reading of the README: commands out of ```bash blocks, placeholders made
real, and the lines it records instead of running (no command runs here)."""

from pathlib import Path

from jobs.bench.readme import Places, check_demo, extract, plan

SNIPPET = """# tool

```bash
make test    # the suite
.venv/bin/python -m jobs.split --input path/to/videos \\
    --output OUT --detector content   # a comment, with a quote's '
```

```
demo: curated 4 videos -> 9 clips, 3 kept, 3 encoded into 1 shard(s), round-trip PSNR 10.8 dB
```

## Weights

```bash
# a comment line
.venv/bin/python -m jobs.score --input OUT/clips --output OUT/scored --preset default --gpus 1
```
"""

CLONE = Path("/clone")
PLACES = Places("/v", "/o", "/oc", "/ox", "/run", "/v/in.mp4", gpus=0, cpus=2)


def test_commands_are_joined_over_continuations_without_comments():
    cmds = extract(SNIPPET)
    assert [c.text for c in cmds] == [
        "make test",
        ".venv/bin/python -m jobs.split --input path/to/videos --output OUT --detector content",
        ".venv/bin/python -m jobs.score --input OUT/clips --output OUT/scored --preset default --gpus 1",
    ]
    assert [c.line for c in cmds] == [4, 5, 17]
    assert cmds[2].section == "Weights"


def test_placeholders_become_the_run_folders():
    split = plan(extract(SNIPPET)[1], PLACES)
    assert split.note is None and len(split.runs) == 1
    argv = split.runs[0].argv[1:]
    assert argv == ["-m", "jobs.split", "--input", "/v", "--output", "/o", "--detector", "content"]
    assert split.runs[0].expect == 0


def test_make_test_is_recorded_not_run():
    p = plan(extract(SNIPPET)[0], PLACES)
    assert p.runs == [] and p.note == "not run here: the suite (CI runs it)"


def test_default_preset_with_gpus_expects_refusals_then_runs_smoke():
    runs = plan(extract(SNIPPET)[2], PLACES).runs
    assert [(r.expect, r.message) for r in runs] == [(2, "GPU(s)"), (2, "hf download"), (0, None)]
    assert "--gpus" not in runs[2].argv and runs[2].argv[-2:] == ["--preset", "smoke"]


def test_demo_numbers_are_compared():
    same = "demo: curated 4 videos -> 9 clips, 3 kept, 3 encoded into 1 shard(s), round-trip PSNR 10.8 dB\n"
    assert check_demo(SNIPPET, same, CLONE) == []
    other = same.replace("3 kept", "4 kept")
    assert check_demo(SNIPPET, other, CLONE)[0].startswith("MISMATCH demo numbers")
