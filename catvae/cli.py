"""The ``catvae`` command.

* ``catvae fit|validate|test|predict --config ...``: training and evaluation (:mod:`catvae.runner`).
* ``catvae bench ...`` (:mod:`catvae.bench`), ``catvae compare ...`` (:mod:`catvae.compare`),
  ``catvae analyze ...`` (:mod:`catvae.analyze`), ``catvae sample ...`` (:mod:`catvae.sample`): tools.

Exit status: 0 done (or nothing left to train), 1 training diverged or an unexpected error (traceback),
2 bad input (one ``catvae: error: ...`` line, nothing written), 130 stopped by Ctrl-C, 143 stopped by
SIGTERM (both after writing ``last.ckpt``).
"""

from __future__ import annotations

import argparse
import sys

from . import analyze, bench, compare, runner, sample

__all__ = ["main"]

TOOLS = ("analyze", "bench", "compare", "sample")


class _ToolParser(argparse.ArgumentParser):
    """argparse that raises its errors (one line, from :func:`catvae.runner.handle`) instead of printing the
    usage and exiting."""

    def error(self, message: str):
        raise argparse.ArgumentError(None, message)


def _tools(argv: list[str]) -> int:
    parser = _ToolParser(prog="catvae", description="catvae tooling")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_ToolParser)
    bench.add_parser(sub)
    compare.add_parser(sub)
    analyze.add_parser(sub)
    sample.add_parser(sub)
    args = parser.parse_args(argv)
    args.argv = argv[1:]
    return args.func(args)


def main(argv: list[str] | None = None) -> int:
    """The ``catvae`` command; returns its exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in TOOLS:
        return runner.handle(_tools, argv)
    return runner.run(argv)


if __name__ == "__main__":
    sys.exit(main())
