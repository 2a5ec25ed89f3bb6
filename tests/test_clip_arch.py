"""Every (open_clip model, pretrained tag) a preset uses is built as the tag's weights expect.

OpenAI's CLIP weights were trained with QuickGELU; open_clip builds `ViT-L-14` with GELU
unless told (it only warns), which silently shifts every embedding and aesthetic score. The
architecture is built here with random weights (meta device: no memory, no download) through
the same loader the score actors use (`load_clip`, `load_weights=False`).
"""

from __future__ import annotations

import pytest

open_clip = pytest.importorskip("open_clip")
torch = pytest.importorskip("torch")

from curate.scores import clip_models  # noqa: E402
from jobs.runtime.presets import PRESETS  # noqa: E402


def _preset_pairs() -> list[tuple[str, str, int | None]]:
    pairs = {
        (p.score.clip_model, p.score.clip_pretrained, p.score.image_size)
        for p in PRESETS.values()
        if p.score.clip_pretrained
        and open_clip.get_pretrained_cfg(p.score.clip_model, p.score.clip_pretrained)
    }
    return sorted(pairs)


# the presets' pairs, plus tags with and without QuickGELU so the rule is checked both ways
PAIRS = [*_preset_pairs(), ("ViT-B-32", "openai", None), ("ViT-B-32", "laion2b_s34b_b79k", None)]


def test_presets_name_an_open_clip_tag():
    assert ("ViT-L-14", "openai", 224) in _preset_pairs()  # the default preset's CLIP is checked below


@pytest.mark.parametrize(("model", "tag", "preset_size"), PAIRS)
def test_architecture_follows_the_pretrained_tag(model, tag, preset_size):
    pcfg = open_clip.get_pretrained_cfg(model, tag)
    with torch.device("meta"):
        net, pre = clip_models.load_clip(model, tag, device="meta", load_weights=False)
    acts = {type(m).__name__ for m in net.modules() if "GELU" in type(m).__name__}
    want = "QuickGELU" if pcfg.get("quick_gelu", False) else "GELU"
    assert acts == {want}, f"{model}/{tag}: tag asks for {want}, model built with {acts}"
    model_size = open_clip.get_model_config(model)["vision_cfg"]["image_size"]
    assert pre["size"] == pcfg.get("image_size", model_size)
    if preset_size is not None:
        assert preset_size == pre["size"]  # the CPU step crops frames to the preset's size
    assert tuple(pre["mean"]) == tuple(pcfg["mean"]) and tuple(pre["std"]) == tuple(pcfg["std"])
    assert pre["interpolation"] == pcfg["interpolation"]


def test_smoke_directory_builds_its_own_config(tmp_path):
    d = clip_models.build_smoke_clip(tmp_path / "smoke")
    net, pre = clip_models.load_clip(str(d), None)
    assert pre["size"] == clip_models.SMOKE_CLIP_CFG["vision_cfg"]["image_size"]
    assert not any(type(m).__name__ == "QuickGELU" for m in net.modules())
