"""The ``drove`` command of the Python package: the CLI built into the extension module."""

import sys

from ._drove import cli


def main() -> None:
    sys.exit(cli(["drove", *sys.argv[1:]]))
