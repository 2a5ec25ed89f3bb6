"""Synthetic inputs with exact ground truth: videos and composites (tests, benchmarks, jobs.demo)."""
