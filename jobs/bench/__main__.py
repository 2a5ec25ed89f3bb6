"""`python -m jobs.bench NAME`: see jobs/bench/__init__.py."""

import sys

from jobs.bench import cli
from jobs.runtime.flags import run_cli

sys.exit(run_cli(cli))  # Ctrl-C: one line, exit 130
