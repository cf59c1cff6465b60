"""`python -m pixtral.train ...` — the entry point torchrun launches on every rank."""

import sys

from pixtral.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
