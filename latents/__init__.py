"""tubelet latents: VAE wrapper, encoding stage, shards, dataset."""
