"""`python -m pixtral.train ...` — the entry point torchrun launches on every rank.

A rank of a torchrun group ends with `os._exit` once training has returned (the process group already
destroyed, output flushed): in the interpreter's own shutdown gloo's worker threads could still release
tensors they hold, and about one run in ten aborted there ("terminate called without an active
exception", exit code -6) after a successful run, which torchrun reports as a failed job.
"""

import os
import sys

from pixtral.train.cli import main

if __name__ == "__main__":
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)
    sys.exit(code)
