"""The one exception type for mistakes a user can make (bad flags, bad files, existing outputs).

The CLI prints it as one line and exits with code 2; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem the user caused and can fix; the message is shown as is."""
