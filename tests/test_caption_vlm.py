"""The VLM loader (smoke dir / hub id / missing weights), batched generation, prompt upsampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from captioner import prompts
from captioner.upsample import SMOKE as UP_SMOKE
from captioner.upsample import PromptUpsampler
from captioner.vlm import Generation, Request, Sampling, build_smoke_vlm, load_vlm
from curate.errors import UsageError


@pytest.fixture(scope="module", autouse=True)
def _env(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("TUBELET_CACHE", str(tmp_path_factory.mktemp("tubelet-cache")))
    mp.setenv("HF_HUB_OFFLINE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    mp.undo()


@pytest.fixture(scope="module")
def smoke():
    return load_vlm("smoke:qwen2_5_vl", device="cpu")


def _video(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, 64, 96, 3), dtype=np.uint8)  # (T, H, W, 3)


def test_smoke_dir_loads_through_the_same_loader(tmp_path, smoke):
    d = build_smoke_vlm(tmp_path / "vlm")
    assert (d / "config.json").is_file() and (d / "model.safetensors").is_file()
    m = load_vlm(str(d), device="cpu")
    assert m.model_id == "smoke-random:qwen2_5_vl"  # never passed off as a real captioner
    req = [Request(prompts.dense_messages(prompts.LATEST), _video(4, 0), 2.0)]
    s = Sampling(max_new_tokens=12)
    assert m.generate(req, s) == smoke.generate(req, s)


def test_batched_generation_matches_one_by_one(smoke):
    msgs = prompts.dense_messages(prompts.LATEST)
    reqs = [Request(msgs, _video(n, n), 2.0) for n in (8, 3, 6)]
    s = Sampling(max_new_tokens=10)
    batched = smoke.generate(reqs, s)
    single = [smoke.generate([r], s)[0] for r in reqs]
    assert [g.new_tokens for g in batched] == [g.new_tokens for g in single]
    assert [g.text for g in batched] == [g.text for g in single]


def test_missing_weights_fail_with_a_clear_message(tmp_path):
    with pytest.raises(UsageError, match=r"`hf download tubelet-test/not-cached-VL`"):
        load_vlm("tubelet-test/not-cached-VL", device="cpu")
    with pytest.raises(UsageError, match=r"config\.json"):
        load_vlm(str(tmp_path / "no-such-model"), device="cpu")
    with pytest.raises(UsageError, match="smoke model family"):
        load_vlm("smoke:gpt2", device="cpu")


def test_upsampling_is_deterministic_per_seed(smoke):
    up = PromptUpsampler(UP_SMOKE)
    up.vlm = smoke
    a = up(["a red kite over a beach", "a cat"], seed=7)
    b = up(["a cat"], seed=7)
    c = up(["a cat"], seed=8)
    assert a[1] == b[0]  # independent of the other prompts in the call
    assert a[1].caption != c[0].caption
    assert a[1].upsampled and a[1].model_id == "smoke-random:qwen2_5_vl"


class _Refuser:
    model_id = "stub-refuser"

    def __init__(self):
        self.seeds = []

    def generate(self, requests, sampling):
        self.seeds.append(sampling.seed)
        return [Generation("I'm sorry, but I cannot help with that request.", 9, True) for _ in requests]


def test_failed_upsampling_keeps_the_user_prompt():
    up = PromptUpsampler(UP_SMOKE)
    up.vlm = _Refuser()
    [res] = up(["  a dog on a skateboard "], seed=3)
    assert res.caption == "a dog on a skateboard" and not res.upsampled
    assert res.reason.startswith("upsampling failed QA twice: refusal")
    assert len(set(up.vlm.seeds)) == 2  # the retry used another seed
    with pytest.raises(UsageError):
        up(["   "])


def test_only_vlm_py_imports_the_model_library():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    files = [*root.glob("captioner/*.py"), *root.glob("jobs/*caption*.py")]
    users = {f.name for f in files if re.search(r"^\s*(from|import) transformers\b", f.read_text(), re.M)}
    assert users == {"vlm.py"}
