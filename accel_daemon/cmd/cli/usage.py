# SPDX-License-Identifier: Apache-2.0
"""accel-image's name and its one-line usage errors.

A module of its own so that both the application (``app``) and the
commands' shared pieces (``base``) use them without importing each other.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

NAME = 'accel-image'


class UsageError(Exception):
    """A bad command line: one line, exit 2."""


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (no usage block)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def one_line_errors(parser: argparse.ArgumentParser) -> None:
    """Make a parser that cliff built raise UsageError instead of printing
    its usage and exiting 2."""
    command = parser.prog[len(NAME):].strip()

    def error(message: str) -> NoReturn:
        raise UsageError('%s: %s' % (command, message) if command
                         else message)
    setattr(parser, 'error', error)
