"""Errors that mean "bad input": the CLI prints them as one clear line and exits 2."""


class InputError(ValueError):
    """Bad input data or settings; the message names the file or config key."""
