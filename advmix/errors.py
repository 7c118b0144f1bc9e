"""Error types whose message is meant for the user as one line (the CLI prints it, no traceback)."""


class AdvmixError(Exception):
    """A failure caused by the user's input or environment, explained in one line."""


class DataError(AdvmixError):
    """Unreadable, missing or malformed input data, or a bad dataset spec."""
