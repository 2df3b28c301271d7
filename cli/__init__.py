"""The ``aigc-kit`` command: each command parses its arguments and calls one library function.

User errors exit with status 2 and one message; ``--debug`` adds the traceback.
Importing this module (and ``aigc-kit --help``) imports no torch. The group and its
failure handling live in :mod:`.group`; the commands in :mod:`.train` and :mod:`.models`.
"""

from __future__ import annotations

import sys

from . import models, train  # noqa: F401 - importing them adds their commands to the group
from .group import cli

__all__ = ["cli", "main"]


def main(argv: list[str] | None = None) -> None:
    """The console script's entry point."""
    cli.main(args=argv, prog_name="aigc-kit")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
