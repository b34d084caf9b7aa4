"""Progress and notices on stderr, silenced by ``kcc --quiet`` (or ``KCC_QUIET=1``).

Long work (training epochs, calibration passes, search trials, benchmark rows) reports
through :func:`progress` / :func:`keras_verbose`; one-off facts (which reader is in
use) through :func:`notice`, printed once per process. Results (tables, metrics) are
printed to stdout by the commands themselves and are never silenced.

Example::

    from keras_ctr_compress import console
    console.set_quiet(True)            # what `kcc --quiet` does
    console.progress("[train] epoch 3/15")   # prints nothing now
"""

from __future__ import annotations

import os
import sys

_ENV = "KCC_QUIET"
_seen: set[str] = set()


def set_quiet(quiet: bool) -> None:
    """Silences (or re-enables) progress for this process and the child processes it starts."""
    os.environ[_ENV] = "1" if quiet else "0"


def is_quiet() -> bool:
    """True when ``kcc --quiet`` or ``KCC_QUIET=1`` asked for silence."""
    return os.environ.get(_ENV, "0").strip().lower() in ("1", "true", "yes", "on")


def progress(message: str) -> None:
    """One progress line on stderr (nothing when quiet)."""
    if not is_quiet():
        print(message, file=sys.stderr, flush=True)


def notice(message: str) -> None:
    """Like :func:`progress`, but each distinct message at most once per process."""
    if message in _seen:
        return
    _seen.add(message)
    progress(message)


def reset_notices() -> None:
    """Forgets which notices were printed: each ``kcc`` command (``cli.main``) states
    its one-off facts again, also when several run in one process (tests, notebooks)."""
    _seen.clear()


def keras_verbose(default: int = 2) -> int:
    """The ``verbose`` to pass to Keras' ``fit``: ``default`` (2 = one line per
    epoch), or 0 when quiet."""
    return 0 if is_quiet() else default
