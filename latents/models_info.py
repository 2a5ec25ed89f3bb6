"""The manifest's model constants (VAE and text encoder), read from the models themselves.

`jobs.encode` and `jobs.curate` both write a latents manifest; this is where its model half comes
from: the VAE loaded on CPU without tiling, and the text encoder's config only (no weights) unless
the preset is smoke.
"""

from __future__ import annotations

from dataclasses import asdict, replace

from curate.errors import UsageError
from curate.weights import local_repo, require, subfolder_kwargs
from latents.encode import EncodeConfig
from latents.text import text_weights


def vae_and_text_info(enc: EncodeConfig) -> tuple[dict, dict]:
    """Constants for the manifest, from the models themselves (CPU; the text encoder's config only)."""
    from latents.text import load_text_encoder
    from latents.vae import load_vae

    vae = load_vae(replace(enc.vae, device="cpu", tiling=False))
    if enc.text.smoke:
        text_info = load_text_encoder(replace(enc.text, device="cpu")).info.to_dict()
    else:
        from transformers import AutoConfig

        source = local_repo(enc.text.source, enc.text.weights_dir)
        kw = subfolder_kwargs(source, enc.text.source, enc.text.model_subfolder)
        try:
            c = AutoConfig.from_pretrained(source, revision=enc.text.revision, **kw)
        except (OSError, ValueError) as e:  # not in the cache / folder: the same message as the check's
            require(text_weights(enc.text), enc.text.weights_dir)
            raise UsageError(
                f"text encoder config of {enc.text.source!r} must be readable, got: "
                f"{str(e).splitlines()[0][:200]}; pass a complete folder with --weights-dir"
            ) from e
        text_info = {
            "text_encoder_id": enc.text.source,
            "revision": enc.text.revision,
            "max_length": enc.text.max_length,
            "dim": int(c.d_model),
            "smoke": False,
            "config": asdict(enc.text),
        }
    vae_info = vae.info.to_dict()
    vae_info["config"] = asdict(enc.vae)  # the preset's own loader config (the driver used CPU, no tiling)
    return vae_info, text_info
