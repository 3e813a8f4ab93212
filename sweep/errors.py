"""Errors that reach the user as one clear line."""


class UserError(Exception):
    """A problem with the user's input or environment: shown as one line, exit code 2."""
