"""The one exception type users see: a one-line message that names the problem and the fix."""


class RagtuneError(Exception):
    """Bad input or a missing requirement. The CLI prints it as one line, no traceback."""
