"""Small shared helpers: atomic file writes, quiet TF logging, memory facts."""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path in ``path``'s folder; renames it onto ``path`` only if
    the block succeeds, so an interrupted write never leaves a complete-looking file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates mode 0600; give the final file the usual umask-based mode.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / 2**20


def _status_kb(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return float(line.split()[1])
    raise OSError(f"/proc/self/status has no {key}")


def rss_mb() -> float:
    """Resident set size of this process now, in MiB."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_mb() -> float:
    """Peak RSS since the last :func:`reset_peak` (or the start), in MiB (Linux)."""
    return _status_kb("VmHWM") / 1024.0


def reset_peak() -> None:
    """Resets the kernel's peak-RSS counter of this process (``clear_refs`` 5, Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def variable_bytes(variables) -> int:
    """Bytes of ``variables`` as stored: elements x dtype itemsize, summed."""
    import numpy as np

    return int(sum(int(np.prod(v.shape)) * np.dtype(str(v.dtype)).itemsize for v in variables))


def _glibc_call(name: str, *args: int) -> None:
    """Calls glibc's allocator function ``name`` through ctypes; nothing elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        getattr(ctypes.CDLL("libc.so.6"), name)(*args)
    except (OSError, AttributeError):
        pass


def trim_heap(collect: bool = True) -> None:
    """Collects Python garbage (unless the caller just did) and hands the C heap's free
    pages back to the OS (glibc keeps them mapped otherwise: RSS only grows, and later
    allocations reuse them unseen by an RSS reading)."""
    import gc

    if collect:
        gc.collect()
    _glibc_call("malloc_trim", 0)


#: mallopt's parameter number of the mmap threshold (glibc malloc.h).
_M_MMAP_THRESHOLD = -3


def return_freed_memory(threshold: int = 2**20) -> None:
    """Makes glibc hand freed blocks of at least ``threshold`` bytes back to the OS at
    once, for the rest of the process.

    By default glibc raises its mmap threshold to the size of the largest block freed
    so far (up to 32 MiB), so once a table-sized block is freed the next ones come
    from the heap, whose freed pages stay resident: a process making successive
    copies of large weights (the LiteRT converter: SavedModel reload, MLIR constants,
    flatbuffer, Python bytes) then adds them up instead of replacing one by the next.
    No effect outside glibc.
    """
    _glibc_call("mallopt", _M_MMAP_THRESHOLD, threshold)


def quiet_tensorflow() -> None:
    """Silence TF's C++ start-up chatter (must run before TensorFlow is imported).

    It also turns oneDNN's custom CPU kernels off, which changes floating-point
    results: every ``kcc`` command (and the test suite) runs with
    ``TF_ENABLE_ONEDNN_OPTS=0``, so a script reproducing a benchmark row must set it
    too. Measured: the same from-scratch alpt-4 training (frappe, seed 0) reaches
    validation AUC 0.98041 with it and 0.97942 without.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def one_line_error(error: BaseException) -> str:
    """The one line a command prints for ``error``.

    Errors this library raises on purpose (``ValueError`` and its subclasses,
    ``OSError`` for files, ``KeyError`` for names) already say what and where; their
    first line is the message. Anything else is unexpected: its type is named, with a
    pointer to ``--debug`` for the traceback.
    """
    if isinstance(error, KeyError) and error.args and isinstance(error.args[0], str):
        text = error.args[0]  # str(KeyError) would quote the message
    else:
        text = str(error)
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if isinstance(error, (ValueError, OSError, KeyError)):
        return first or type(error).__name__
    return f"{type(error).__name__}: {first} (unexpected; rerun with --debug for the traceback)"

