"""The one error type that means "the user's input is wrong": the CLI prints it on one line and exits 2."""


class UserError(ValueError):
    """Bad input, reported as one line that names the culprit and what is accepted.

    Raised before anything is written, so a rejected command leaves no files behind.
    """

    def __init__(self, message: str):
        # One line, always: a multi-line message would be cut by log scrapers and Slurm's job log.
        super().__init__(" ".join(str(message).split()))


def check(condition: bool, message: str) -> None:
    """Raise `UserError(message)` unless `condition` holds."""
    if not condition:
        raise UserError(message)
