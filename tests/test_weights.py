"""Real weights: found in a weights folder or the HF cache, or the job stops first with the fetch line.

Nothing is downloaded: weights folders and HF caches are laid out with empty files, which is
all `curate.weights.locate` looks at.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from curate import schema as S
from curate.errors import UsageError
from curate.io.storage import write_parquet_atomic
from curate.weights import Weights, locate, missing_files, require
from jobs.runtime.presets import DEFAULT
from latents.weights import stage_weights, with_weights_dir

REPO = Path(__file__).resolve().parents[1]
OLD_CLI = "huggingface" + "-cli"  # split so this file does not match itself


def _touch(root: Path, rel: str, text: str = "") -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def _fill(root: Path, weights: list[Weights]) -> None:
    """Lay out every file the weights ask for (first alternative) as `hf download --local-dir` would."""
    for w in weights:
        base = root if w.url else root / w.repo
        for rel in (*w.files, *(alts[0] for alts in w.one_of), *(w.any_of[0] if w.any_of else ())):
            _touch(base, rel, '{"weight_map": {}}' if rel.endswith(".index.json") else "")


@pytest.fixture
def offline_home(tmp_path, monkeypatch):
    """An empty HF cache and a HOME of our own (so `~/w` is ours); returns HOME."""
    import huggingface_hub.constants as C

    monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TUBELET_WEIGHTS", raising=False)
    return tmp_path / "home"


def test_no_weights_message_names_the_removed_cli():
    hits = [
        str(p.relative_to(REPO))
        for p in [*REPO.rglob("*.py"), REPO / "README.md"]
        if ".venv" not in p.parts and OLD_CLI in p.read_text(errors="replace")
    ]
    assert hits == []


def test_locate_in_a_weights_folder_and_sharded_index(tmp_path):
    w = Weights(
        "VAE",
        "org/model",
        files=("vae/config.json",),
        any_of=(("vae/diffusion_pytorch_model.safetensors.index.json",),),
    )
    assert locate(w, str(tmp_path)) is None
    _touch(tmp_path / "org/model", "vae/config.json")
    _touch(
        tmp_path / "org/model",
        "vae/diffusion_pytorch_model.safetensors.index.json",
        '{"weight_map": {"a": "diffusion_pytorch_model-00001-of-00002.safetensors", '
        '"b": "diffusion_pytorch_model-00002-of-00002.safetensors"}}',
    )
    _touch(tmp_path / "org/model", "vae/diffusion_pytorch_model-00001-of-00002.safetensors")
    assert locate(w, str(tmp_path)) is None  # one shard of two is not the model
    _touch(tmp_path / "org/model", "vae/diffusion_pytorch_model-00002-of-00002.safetensors")
    assert locate(w, str(tmp_path)) == tmp_path / "org/model"
    with pytest.raises(UsageError, match=r"`hf download org/other --local-dir .*/org/other`"):
        require([Weights("VLM", "org/other", files=("config.json",))], str(tmp_path))


def test_locate_in_the_hf_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as C

    monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path))
    w = Weights(
        "CLIP", "timm/some-clip", any_of=(("open_clip_model.safetensors",), ("open_clip_pytorch_model.bin",))
    )
    assert locate(w) is None
    snap = tmp_path / "models--timm--some-clip" / "snapshots" / "abc123"
    _touch(tmp_path / "models--timm--some-clip", "refs/main", "abc123")
    _touch(snap, "open_clip_pytorch_model.bin")
    assert locate(w) == snap


def test_check_lists_missing_weights_with_fetch_lines_then_passes(offline_home, capsys):
    from jobs.check import main

    assert main(["--preset", "default"]) == 2
    err = capsys.readouterr().err
    for line in (
        "hf download timm/vit_large_patch14_clip_224.openai",
        "hf download Qwen/Qwen2.5-VL-7B-Instruct",
        "hf download Wan-AI/Wan2.1-T2V-1.3B-Diffusers --include 'vae/*'",
        "hf download Wan-AI/Wan2.1-T2V-1.3B-Diffusers --include 'text_encoder/*' 'tokenizer/*'",
        "curl -L -o ~/.cache/tubelet/weights/sac+logos+ava1-l14-linearMSE.pth",
    ):
        assert line in err
    _fill(
        offline_home / "w", stage_weights(**{s: getattr(DEFAULT, s) for s in ("score", "caption", "encode")})
    )
    assert main(["--preset", "default", "--weights-dir", "~/w"]) == 0
    out = capsys.readouterr().out
    assert out.count("ok ") == 5 and f"({offline_home}/w/Qwen/Qwen2.5-VL-7B-Instruct)" in out
    (offline_home / "w/Wan-AI/Wan2.1-T2V-1.3B-Diffusers/vae/config.json").unlink()  # an incomplete download
    assert main(["--preset", "default", "--weights-dir", "~/w"]) == 2
    assert "MISSING wan VAE" in capsys.readouterr().out
    assert main(["--preset", "smoke"]) == 0
    assert "no downloaded weights needed" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("job", "expect"),
    [
        (
            "caption",
            "`hf download Qwen/Qwen2.5-VL-7B-Instruct --local-dir {home}/w/Qwen/Qwen2.5-VL-7B-Instruct`",
        ),
        (
            "encode",
            "`hf download Wan-AI/Wan2.1-T2V-1.3B-Diffusers --include 'vae/*' --local-dir {home}/w/Wan-AI/",
        ),
        ("curate", "`hf download timm/vit_large_patch14_clip_224.openai --include"),
    ],
)
def test_jobs_stop_with_exit_2_before_ray_when_weights_are_missing(
    offline_home, tmp_path, capsys, job, expect
):
    import importlib

    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()  # an earlier test's instance: this test checks that none is started
    inp = tmp_path / "in"
    inp.mkdir()
    write_parquet_atomic(
        S.empty_table(), inp / "part-00000.parquet"
    )  # a valid, empty input: weights stop the job
    (inp / "v.mp4").write_bytes(b"")
    argv = [
        "--input",
        str(inp),
        "--output",
        str(tmp_path / "out"),
        "--preset",
        "default",
        "--weights-dir",
        "~/w",
    ]
    mod = importlib.import_module(f"jobs.{job}")
    assert mod.cli(argv) == 2
    assert expect.format(home=offline_home) in capsys.readouterr().err
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()  # no actor, no Ray instance


def test_caption_cli_missing_weights_is_one_message_not_a_traceback(tmp_path):
    env = {
        **{k: v for k, v in os.environ.items() if k != "TUBELET_WEIGHTS"},
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "PYTHONPATH": str(REPO),
    }
    scored = tmp_path / "OUT" / "scored"  # a valid stage folder, so the weights check is what stops the job
    scored.mkdir(parents=True)
    write_parquet_atomic(S.empty_table(), scored / "part-00000.parquet")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.caption",
            "--input",
            str(scored),
            "--output",
            str(tmp_path / "OUT" / "captions"),
            "--preset",
            "default",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert r.returncode == 2 and "`hf download Qwen/Qwen2.5-VL-7B-Instruct`" in r.stderr
    assert "Traceback" not in r.stderr


def test_encode_driver_info_turns_a_missing_text_encoder_into_the_message(tmp_path):
    import dataclasses

    from latents.encode import SMOKE
    from latents.models_info import vae_and_text_info
    from latents.text import TextConfig

    enc = dataclasses.replace(SMOKE, text=TextConfig(source="tubelet-test/no-such-umt5"))
    with pytest.raises(
        UsageError, match=r"`hf download tubelet-test/no-such-umt5 --include 'text_encoder/\*'"
    ):
        vae_and_text_info(enc)


def test_weights_dir_reaches_every_loader_config():
    p = with_weights_dir(DEFAULT, "~/w")
    dirs = {
        p.score.weights_dir,
        p.caption.weights_dir,
        p.upsample.weights_dir,
        p.encode.vae.weights_dir,
        p.encode.text.weights_dir,
    }
    assert dirs == {os.path.expanduser("~/w")}


def _cache_snapshot(cache: Path, repo: str, rels: list[str]) -> None:
    """An HF cache holding `rels` of `repo` (empty files; index files with an empty weight map)."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    _touch(folder, "refs/main", "abc123")
    for rel in rels:
        _touch(
            folder / "snapshots" / "abc123", rel, '{"weight_map": {}}' if rel.endswith(".index.json") else ""
        )


def test_check_and_loaders_agree_on_a_weights_folder_with_only_vae(offline_home, tmp_path):
    """The text encoder is complete in the HF cache, but DIR/<repo> holds only `vae/`: the loaders
    read DIR/<repo> (it exists), so the check must judge that folder too and name what it lacks."""
    import huggingface_hub.constants as C

    from jobs.check import main
    from latents.text import load_text_encoder, text_weights

    text = with_weights_dir(DEFAULT, str(tmp_path / "w")).encode.text
    [w] = text_weights(text)
    _cache_snapshot(Path(C.HF_HUB_CACHE), w.repo, [*w.files, *(a[0] for a in w.one_of), *w.any_of[0]])
    assert locate(w) is not None  # the cache alone would do
    vae_only = tmp_path / "w" / w.repo / "vae"
    _touch(vae_only, "config.json", "{}")
    assert locate(w, text.weights_dir) is None
    assert missing_files(w, text.weights_dir)[:2] == [
        "text_encoder/config.json",
        "tokenizer/tokenizer_config.json",
    ]
    assert main(["--preset", "default", "--stages", "encode", "--weights-dir", str(tmp_path / "w")]) == 2
    with pytest.raises(UsageError, match="text encoder weights"):
        load_text_encoder(text)  # the loader looks in the same folder (never its root as the encoder)


def test_vlm_check_names_every_file_the_loader_opens(tmp_path):
    from captioner.vlm import vlm_weights

    [w] = vlm_weights(DEFAULT.caption.model, str(tmp_path))
    repo = tmp_path / w.repo
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    for rel in (
        "config.json",
        "generation_config.json",
        "preprocessor_config.json",
        "chat_template.json",
        "tokenizer_config.json",
        "tokenizer.json",
        *shards,
    ):
        _touch(repo, rel)
    _touch(repo, "model.safetensors.index.json", json.dumps({"weight_map": dict(zip("ab", shards))}))
    assert missing_files(w, str(tmp_path)) == [] and locate(w, str(tmp_path)) == repo
    for rel, named in (
        ("generation_config.json", "generation_config.json"),
        ("preprocessor_config.json", "preprocessor_config.json or video_preprocessor_config.json"),
        ("chat_template.json", "chat_template.json or chat_template.jinja"),
        ("tokenizer.json", "tokenizer.json"),
        (shards[1], shards[1]),
    ):
        (repo / rel).rename(repo / f"{rel}.part")
        assert missing_files(w, str(tmp_path)) == [named]
        with pytest.raises(UsageError, match=f"lacks {named}"):
            require([w], str(tmp_path))
        (repo / f"{rel}.part").rename(repo / rel)


def test_clip_check_names_both_files_either_of_which_serves(tmp_path):
    """open_clip loads the safetensors twin or the .bin; with neither there the message names both
    (it named only the one the fetch line does not get)."""
    from curate.scores.clip_models import clip_tag_weights

    [w] = clip_tag_weights("ViT-L-14", "openai")
    assert missing_files(w, str(tmp_path)) == ["open_clip_model.safetensors or open_clip_pytorch_model.bin"]
    _touch(tmp_path / w.repo, "open_clip_pytorch_model.bin")
    assert missing_files(w, str(tmp_path)) == []
