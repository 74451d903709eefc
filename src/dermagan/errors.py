"""One exception type for every problem a user can fix (bad input, bad params)."""


class DermaganError(Exception):
    """A user-facing error: the CLI prints its message and exits with status 2."""
