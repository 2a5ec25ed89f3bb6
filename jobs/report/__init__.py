"""The static HTML report of a run: `python -m jobs.report --output OUT` (jobs/report/build.py).

build.py gathers the stage outputs and writes the page, html.py renders it, media.py draws the
previews and histograms, outputs.py holds what was read.
"""

from jobs.report.build import (
    cli,
    load_outputs,
    main,
    reason_key,
    thresholds_of,
    write_report,
    write_report_to,
)

__all__ = ["cli", "load_outputs", "main", "reason_key", "thresholds_of", "write_report", "write_report_to"]
