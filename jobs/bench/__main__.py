"""`python -m jobs.bench NAME`: see jobs/bench/__init__.py."""

import sys

from jobs.bench import cli

sys.exit(cli())
