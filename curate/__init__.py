"""tubelet curation stages: probe, decode, split, score, filter."""

__version__ = "0.1.0"
