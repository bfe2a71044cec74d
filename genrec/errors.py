"""Errors genrec raises for bad input. Each names where the problem is and what was expected."""

from __future__ import annotations

from pathlib import Path


class GenrecError(Exception):
    """Base class: an error with a message meant for the user (CLI exit code 2, HTTP 4xx)."""


class DataError(GenrecError):
    """Bad input data: names the file, the line and/or field, and what was expected."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        expected: str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        self.expected = expected
        self.reason = message
        where = []
        if self.file:
            where.append(self.file)
        if line is not None:
            where.append(f"line {line}")
        if field:
            where.append(f"field '{field}'")
        text = (": ".join([", ".join(where), message]) if where else message)
        if expected:
            text += f" (expected {expected})"
        super().__init__(text)


class TooLargeError(DataError):
    """Input over a size or row limit (HTTP 413): names the limit that was hit."""


class DatasetNotFoundError(GenrecError):
    """A registered data set whose files are not where genrec looks for them."""


class NotFoundError(GenrecError):
    """An unknown user, platform or item."""


class ConflictError(GenrecError):
    """Something that already exists, e.g. a platform registered a second time."""
