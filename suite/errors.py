"""The one error type that means "the user's input is wrong": the CLI prints it on one line and exits 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


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


def suggest(word: str, accepted: Iterable[str], *, otherwise: str | None = None) -> str:
    """`did you mean 'x'?` for the closest accepted name, else `otherwise` (default: the accepted list)."""
    accepted = list(accepted)
    close = difflib.get_close_matches(str(word), accepted, n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return otherwise or f"accepted: {', '.join(accepted)}"
