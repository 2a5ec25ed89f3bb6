"""The bundled lightweight DiT trainer (imports only `latents` and torch)."""
