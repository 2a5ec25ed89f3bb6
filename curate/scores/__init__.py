"""Per-clip scores: open_clip/aesthetic, cheap technical scores, flow, OCR, NSFW."""
