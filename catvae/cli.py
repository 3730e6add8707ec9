"""The ``catvae`` command: LightningCLI subcommands (fit/validate/test/predict) plus tooling."""

from __future__ import annotations

import argparse
import sys

TOOLS = ("bench",)


def _tools_main(argv: list[str]) -> int:
    from . import bench

    parser = argparse.ArgumentParser(prog="catvae")
    sub = parser.add_subparsers(dest="command", required=True)
    bench.add_parser(sub)
    args = parser.parse_args(argv)
    args.func(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in TOOLS:
        return _tools_main(argv)
    print("usage: catvae {bench} ...   (training subcommands arrive with the VAE application)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
