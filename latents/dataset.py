"""Torch IterableDataset over latent shards (latents/shard-*.parquet + manifest.json).

CONTRACT (shared with latents/dit, the trainer):

- `LatentDataset(root, batch_size=None | int, shuffle=True, seed=0, rank=None, world_size=None, ...)`.
- Each sample is a dict:
  {"clip_id": str, "caption": str,
   "latent": torch.Tensor [C, T, H, W] float32, ALREADY NORMALISED with the VAE's
             latents mean/std and scaling factor recorded in the manifest (see latents/vae.py),
   "text_embedding": torch.Tensor [L, D] float32 (zero past the caption's tokens),
   "text_mask": torch.BoolTensor [L]}   with L = manifest text_encoder.max_length.
- `batch_size=None`: variable-size samples (for packing, NaViT style).
  `batch_size=B`: bucket-homogeneous batches (all samples share one latent shape), stacked:
  "latent" [B, C, T, H, W], "text_embedding" [B, L, D], "text_mask" [B, L],
  "clip_id"/"caption" lists of str. Use with `DataLoader(ds, batch_size=None)`.
- Rows are split by rank (DDP; from torch.distributed when not given) and DataLoader worker;
  every row is read exactly once per epoch over all ranks and workers. `set_epoch(e)` reshuffles
  deterministically from (seed, epoch).
- Resumable: `state_dict()` / `load_state_dict(state)` save and restore (epoch, items consumed);
  see the class docstring for DataLoader workers.
"""
