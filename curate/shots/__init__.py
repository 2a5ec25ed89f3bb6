"""Shot detection and splitting: the detectors, transitions, spans -> clip records."""
