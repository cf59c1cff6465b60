import sys

from pixtral.serve.cli import main

sys.exit(main())
