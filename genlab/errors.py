"""The one exception type that reaches the user as a single line and exit code 2."""


class GenlabError(Exception):
    """Bad input: an unknown name, a missing file, an invalid value. Never a bug."""


class TrainingStopped(Exception):
    """Training stopped on purpose (signal, non-finite loss) after saving what it could."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
