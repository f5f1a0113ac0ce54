"""The one error type meant for the user: the CLI prints its message without a traceback and exits 2."""


class UserError(Exception):
    """Bad input or an impossible request, explained in one readable message."""
