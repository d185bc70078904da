"""Child-process entry: `python -m bench.launch [--uvloop] ARGS` runs `matrix ARGS`, optionally on uvloop.

The benchmark runs the mock providers (its token source) on uvloop so the harness costs
less CPU than the system under test (docs/measuring.md, "The load generator must be cheap"); the relay runs on
whatever loop `matrix serve` chooses unless `--relay-uvloop` asks otherwise.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if argv[:1] == ["--uvloop"]:
        argv = argv[1:]
        try:
            import uvloop
            uvloop.install()
        except ImportError:
            print("bench.launch: uvloop is not installed; using asyncio", file=sys.stderr)
    from matrix.cli import main as matrix_main
    return matrix_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
