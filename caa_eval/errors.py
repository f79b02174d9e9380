"""One exception type for user-facing errors: the CLI prints its message as one line."""


class CAAEvalError(Exception):
    """A problem with the user's input or setup; the message says what is wrong and what to do."""
