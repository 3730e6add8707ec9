"""Errors that the CLI reports as one line (no traceback) with a non-zero exit."""


class UserError(Exception):
    """A problem with the user's input (config, data, checkpoint): the message says what and how to fix it."""
