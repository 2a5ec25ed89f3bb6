"""`python -m jobs.report`: see jobs/report/build.py."""

import sys

from jobs.report.build import main
from jobs.runtime.flags import run_cli

sys.exit(run_cli(main))  # Ctrl-C: one line, exit 130
