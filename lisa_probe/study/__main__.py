"""``python -m lisa_probe.study``: run a study file (see ``lisa_probe.study.runner``)."""

import sys

from lisa_probe.study.cli import main

sys.exit(main())
