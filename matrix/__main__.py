"""`python -m matrix` is the `matrix` command."""

from .cli import main

raise SystemExit(main())
