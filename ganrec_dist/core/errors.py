"""The one exception type that the command line turns into a one-line message."""


class UserError(Exception):
    """A problem with the user's input or environment: reported in one line, no traceback."""
