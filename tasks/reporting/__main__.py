"""``python -m tasks.reporting compare RUN_A RUN_B [...]``: see ``tasks.reporting.compare``."""

from __future__ import annotations

import argparse
import sys

from .compare import compare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.reporting", description="Kestrel evaluation reports.")
    commands = parser.add_subparsers(dest="command", required=True)
    compare_parser = commands.add_parser("compare", help="side-by-side numbers of runs, with differences")
    compare_parser.add_argument("runs", nargs="+", help="metrics.json, report/ or run folders; the first is the base")
    args = parser.parse_args(argv)
    try:
        print(compare(args.runs), end="")
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
