"""Capturing the C++ chatter of the TF converter and the LiteRT interpreter.

TensorFlow's converter and LiteRT log through absl / stderr from C++, which Python's
``contextlib.redirect_stderr`` cannot see, so the capture works on the file
descriptors. Captured text is never thrown away on failure: callers attach it to the
error they raise.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class CapturedOutput:
    """What was written to stdout / stderr inside :func:`captured_output`."""

    text: str = ""

    def tail(self, lines: int = 20) -> str:
        """The last ``lines`` non-empty lines (what an error message should quote)."""
        kept = [ln for ln in self.text.splitlines() if ln.strip()]
        return "\n".join(kept[-lines:])


def _flush_python_streams() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()


@contextlib.contextmanager
def captured_output(enabled: bool = True) -> Iterator[CapturedOutput]:
    """Redirects file descriptors 1 and 2 into a temporary file for the block.

    The returned :class:`CapturedOutput` is filled when the block exits (also when it
    raises), so ``except`` clauses outside the block can quote it. With
    ``enabled=False`` nothing is redirected (a verbose run).
    """
    captured = CapturedOutput()
    if not enabled:
        yield captured
        return
    _flush_python_streams()
    with tempfile.TemporaryFile(mode="w+b") as log:
        saved = (os.dup(1), os.dup(2))
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            yield captured
        finally:
            _flush_python_streams()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            log.seek(0)
            captured.text = log.read().decode("utf-8", errors="replace")
