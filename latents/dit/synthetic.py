"""Synthetic samples in the dataset contract, for tests, benchmarks and trying the trainer.

A sample is {"clip_id": str, "caption": str, "latent": float32 [C, T, H, W] (normalised),
"text_embedding": float32 [L, D], "text_mask": bool [L]}, as `latents.dataset` yields.
Random content: nothing trained on it means anything.
"""

from __future__ import annotations

import torch


def synthetic_samples(
    n: int,
    shapes: list[tuple[int, int, int]] | None = None,
    channels: int = 4,
    text_len: int = 6,
    text_dim: int = 16,
    seed: int = 0,
) -> list[dict]:
    """n samples cycling through latent (T, H, W) `shapes`; distinct random captions and latents."""
    g = torch.Generator().manual_seed(seed)
    shapes = shapes or [(2, 4, 4)]
    out = []
    for i in range(n):
        t, h, w = shapes[i % len(shapes)]
        length = 2 + i % (text_len - 1)  # captions of different token counts exercise the mask
        mask = torch.arange(text_len) < length
        emb = torch.randn(text_len, text_dim, generator=g) * mask[:, None]
        out.append(
            {
                "clip_id": f"synthetic-{seed}-{i}",
                "caption": f"synthetic caption {i} (random)",
                "latent": torch.randn(channels, t, h, w, generator=g),
                "text_embedding": emb,
                "text_mask": mask,
            }
        )
    return out


# ---- a compositional task: a coloured square moving along a named track ----------------------
# Latents [4, 3, 6, 6] (C, T, H, W): with patch (1, 2, 2) a frame is 3 x 3 tokens and the square
# fills one token cell. Captions name two independent factors, "a <colour> square moving <track>".
# Text conditioning without a text encoder: every word has a fixed random embedding (seeded,
# the same in every call), so each factor is linearly present in the caption's token embeddings.

COLOURS = ("red", "green", "blue", "yellow")
# each colour a sign pattern over the 4 channels (rows of a 4x4 Hadamard matrix: equal energy,
# mutually orthogonal, so a colour is read back by the largest dot product)
COLOUR_VECTORS = torch.tensor(
    [[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=torch.float32
)
# per track: the square's (row, column) token cell in frames 0, 1, 2 (along one edge of the frame)
TRACKS: dict[str, tuple[tuple[int, int], ...]] = {
    "right": ((0, 0), (0, 1), (0, 2)),
    "down": ((0, 2), (1, 2), (2, 2)),
    "left": ((2, 2), (2, 1), (2, 0)),
    "up": ((2, 0), (1, 0), (0, 0)),
}
SQUARE_SHAPE = (4, 3, 6, 6)
CELL = 2  # latent pixels per token cell side (the patch's p_h = p_w)
_WORDS = ("a", "square", "moving", *COLOURS, *TRACKS)


def word_embeddings(dim: int = 16) -> dict[str, torch.Tensor]:
    """Fixed random unit-scale embedding per word (seed 1234, independent of the data seed)."""
    g = torch.Generator().manual_seed(1234)
    return {w: torch.randn(dim, generator=g) for w in _WORDS}


def square_caption(
    colour: str, track: str, text_len: int = 6, dim: int = 16
) -> tuple[str, torch.Tensor, torch.Tensor]:
    """(caption, text_embedding [L, D] zero past the caption, text_mask [L])."""
    words = ["a", colour, "square", "moving", track]
    emb = word_embeddings(dim)
    text = torch.zeros(text_len, dim)
    text[: len(words)] = torch.stack([emb[w] for w in words])
    return " ".join(words), text, torch.arange(text_len) < len(words)


def square_latent(
    colour: str,
    track: str,
    amplitude: float = 1.5,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """[4, 3, 6, 6]: zero background (plus optional noise), the square = amplitude * colour vector."""
    x = noise * torch.randn(SQUARE_SHAPE, generator=generator) if noise else torch.zeros(SQUARE_SHAPE)
    vec = amplitude * COLOUR_VECTORS[COLOURS.index(colour)]
    for f, (r, c) in enumerate(TRACKS[track]):
        x[:, f, r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] = vec[:, None, None]
    return x


def square_samples(pairs: list[tuple[str, str]], per_pair: int, seed: int = 0) -> list[dict]:
    """`per_pair` samples per (colour, track), in the dataset contract; amplitude in [1.2, 1.8] and
    background noise 0.05 vary per sample, so the data is a distribution, not 12 points."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for colour, track in pairs:
        caption, text, mask = square_caption(colour, track)
        for k in range(per_pair):
            amp = 1.2 + 0.6 * float(torch.rand((), generator=g))
            out.append(
                {
                    "clip_id": f"square-{colour}-{track}-{k}",
                    "caption": caption,
                    "latent": square_latent(colour, track, amp, 0.05, g),
                    "text_embedding": text,
                    "text_mask": mask,
                }
            )
    return out


def decode_squares(latents: torch.Tensor) -> list[tuple[str | None, str | None]]:
    """(B, 4, 3, 6, 6) -> per sample (colour, track) by an exact rule: per frame the token cell of
    the largest energy; the track whose cells those are in every frame (else None); the colour
    whose vector has the largest dot product with the mean channel values of those cells."""
    b, c, t, h, w = latents.shape
    cells = latents.reshape(b, c, t, h // CELL, CELL, w // CELL, CELL).mean((4, 6))  # (B, C, T, 3, 3)
    energy = cells.pow(2).sum(1).flatten(2)  # (B, T, 9)
    best = energy.argmax(-1)  # (B, T) cell index per frame
    out = []
    for i in range(b):
        found = tuple(divmod(int(k), w // CELL) for k in best[i])
        track = next((name for name, path in TRACKS.items() if path == found), None)
        mean = torch.stack([cells[i, :, f, r, q] for f, (r, q) in enumerate(found)]).mean(0)  # (C,)
        colour = COLOURS[int((COLOUR_VECTORS @ mean).argmax())]
        out.append((colour, track))
    return out
