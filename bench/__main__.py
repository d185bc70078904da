"""`python -m bench ARGS` is `matrix bench ARGS`."""

import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
