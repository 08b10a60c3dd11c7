"""User-facing errors.

A :class:`QualaError` is a mistake the user can fix (a missing file, a bad flag). The CLI prints its message
on one line and exits with code 2; the HTTP server maps it to a 4xx response. Anything else is a bug.
"""


class QualaError(Exception):
    """A user mistake, with a message that says what to fix."""
