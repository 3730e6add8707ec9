"""The ``catvae`` command.

* ``catvae fit|validate|test|predict --config ...``: training and evaluation (:mod:`catvae.runner`).
* ``catvae bench ...`` (:mod:`catvae.bench`), ``catvae compare ...`` (:mod:`catvae.compare`),
  ``catvae analyze ...`` (:mod:`catvae.analyze`), ``catvae sample ...`` (:mod:`catvae.sample`): tools, whose
  command lines are in :mod:`catvae.tools`.

``catvae --help`` and a tool's ``--help`` and argument errors are answered before torch and Lightning are
imported; what runs imports them (:mod:`catvae.runner` too, by name through :func:`catvae.tools.function`).

Exit status: 0 done (or nothing left to train), 1 training diverged or an unexpected error (traceback),
2 bad input (one ``catvae: error: ...`` line, nothing written), 130 stopped by Ctrl-C, 143 stopped by
SIGTERM (both after writing ``last.ckpt``).
"""

from __future__ import annotations

import argparse
import sys

from . import tools

__all__ = ["main"]

TOOLS = ("analyze", "bench", "compare", "sample", "tune")


def _tool(args: argparse.Namespace) -> int:
    return tools.function(args.func)(args)


def main(argv: list[str] | None = None) -> int:
    """The ``catvae`` command; returns its exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(tools.overview())
        return 0 if argv else 2
    if argv[0] in TOOLS:
        argv = tools.underscored(argv)
        try:  # --help and argument errors before the heavy imports
            args = tools.build_parser().parse_args(argv)
        except argparse.ArgumentError as err:
            print(f"catvae: error: {' '.join(str(err).split())} (see catvae {argv[0]} --help)", file=sys.stderr)
            return 2
        args.argv = argv[1:]
        return tools.function("catvae.runner:handle")(_tool, args)
    return tools.function("catvae.runner:run")(argv)


if __name__ == "__main__":
    sys.exit(main())
