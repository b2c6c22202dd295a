"""The one exception type for mistakes a user can make (bad flags, bad files, existing outputs).

The CLI prints it as one line and exits with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """A problem the user caused and can fix; the message is shown as is."""


def script_exit(prog: str, body: Callable[[], str]) -> int:
    """A script's main as the CLI's: body() returns the line to print on success (exit code 0); a UserError is one
    line `prog: message` on stderr and exit code 2."""
    try:
        line = body()
    except UserError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    print(line)
    return 0
