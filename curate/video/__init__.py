"""Video files: probe, decode in display orientation, write mp4."""
