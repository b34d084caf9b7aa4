"""Data errors with one-line, location-first messages, and the bad-row budget."""

from __future__ import annotations

from dataclasses import dataclass, field


class DataError(ValueError):
    """Malformed input data. The message is one line: ``FILE:LINE: what (expected ...)``."""


def located(source: str, line: int | str, what: str) -> str:
    """Formats ``what`` as a located one-line message (newlines in values are escaped)."""
    return f"{source}:{line}: {what}".replace("\n", "\\n").replace("\r", "\\r")


@dataclass
class BadRows:
    """Counts malformed rows against a budget while a source is read.

    Every bad row is reported with :meth:`add` in file order; the first one past
    ``limit`` raises :class:`DataError` with its own message (so with the default
    budget 0 the error names the first malformed row). The first few skipped
    messages are kept in ``examples`` for the dataset's ``info``.
    """

    limit: int = 0
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, message: str) -> None:
        self.count += 1
        if self.count > self.limit:
            if self.limit:
                message += f" [more than skip_bad_rows={self.limit} bad rows]"
            raise DataError(message)
        if len(self.examples) < 5:
            self.examples.append(message)
