"""``python -m pixtral.evals ...`` == ``pixtral eval ...``."""

import sys

from pixtral.evals.cli import main

sys.exit(main())
