"""`python -m jobs.report`: see jobs/report/build.py."""

import sys

from jobs.report.build import main

sys.exit(main())
