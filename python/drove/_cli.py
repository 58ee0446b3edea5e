"""The ``drove`` command of the Python package: the CLI built into the extension module."""

import signal
import sys

from ._drove import cli


def main() -> None:
    # Ctrl-C goes to the CLI as it does to the drove binary, not to Python's handler.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(cli(["drove", *sys.argv[1:]]))
