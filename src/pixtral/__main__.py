"""`python -m pixtral ...` is the `pixtral` command."""

import sys

from pixtral.cli import main

sys.exit(main())
