"""The static HTML report of a run: `python -m jobs.report --output OUT` (jobs/report/build.py).

build.py gathers the stage outputs and writes the page, html.py renders it, media.py draws the
previews and histograms, outputs.py holds what was folded; fold.py folds OUT's tables one part
at a time (parts.py reads the parts), so the report never holds a whole table.
"""

from jobs.report.build import (
    cli,
    load_outputs,
    main,
    thresholds_of,
    write_report,
    write_report_to,
)
from jobs.report.fold import reason_key

__all__ = ["cli", "load_outputs", "main", "reason_key", "thresholds_of", "write_report", "write_report_to"]
