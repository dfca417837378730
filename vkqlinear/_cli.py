"""What every command-line entry shares: its name as the user typed it, and a parser whose
help shows a description and examples as written."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path


def prog_name(sub=None):
    """How the user started the command line: ``vkqlinear`` (the console script) or
    ``python -m vkqlinear``, with the subcommand ``sub``."""
    script = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    base = script if script.startswith("vkqlinear") and not script.endswith(".py") \
        else "python -m vkqlinear"
    return f"{base} {sub}" if sub else base


def help_text(sub, description, examples):
    """The ``prog``, ``description``, ``epilog`` and ``formatter_class`` of a parser for
    subcommand ``sub``: its ``description`` and ``examples`` (``[(arguments, what they
    do)]``), shown as they are written."""
    prog = prog_name(sub)
    description = textwrap.fill(description, 79)
    epilog = "examples:\n" + "\n".join(f"  {prog} {a}".rstrip() + f"\n      {what}"
                                         for a, what in examples)
    return dict(prog=prog, description=description, epilog=epilog,
                formatter_class=argparse.RawDescriptionHelpFormatter)


def parser(sub, description, examples):
    """An ``ArgumentParser`` for subcommand ``sub`` (:func:`help_text`)."""
    return argparse.ArgumentParser(**help_text(sub, description, examples))
