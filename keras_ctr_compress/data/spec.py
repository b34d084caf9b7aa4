"""Dataset spec strings: ``KIND:PATH,key=value,...`` or a named dataset.

Grammar (one line, no spaces needed)::

    criteo:PATH[,opts]         raw Criteo DAC rows (TSV, or the Kaggle CSV with a header);
                               PATH is a file or a folder holding train/dev/test files
    libfm:PATH[,opts]          libFM rows ``label featid:1 ...``
    csv:PATH,schema=S.json     delimited text described by a schema file
    parquet:PATH,schema=S.json Parquet file (or folder of .parquet files) + schema
    arrow:PATH,schema=S.json   Arrow IPC / Feather v2 file (or folder of .arrow/.feather files)
    movielens100k[:DIR]        RecBole atomic ml-100k files (default: the shared copy)
    frappe[:PATH]              full Frappe rebuilt from frappe.csv (default: the shared copy)
    frappe-nfm                 the NFM libFM Frappe files (validation + test), re-split 8:1:1
    criteo-8k                  the shared criteo_widersdnn_8k sample (its own train/dev/test)
    synthetic[:key=value,...]  the built-in generator (see ``synthetic.py``)

Everything after the path is ``key=value`` options separated by commas; a named
dataset takes them after ``:`` or ``,`` (``frappe,min_count=2``). Options common to
all kinds: ``min_count``, ``limit`` (read only the first N rows), ``skip_bad_rows``.
``csv`` / ``parquet`` / ``arrow`` also take ``reader=auto|tfio|pyarrow`` (see ``data/tfio.py``).
A path may not contain a comma (the option separator).
"""

from __future__ import annotations

from dataclasses import dataclass, field

COMMON_OPTIONS = ("min_count", "limit", "skip_bad_rows")
SYNTHETIC_OPTIONS = ("rows", "fields", "vocab", "total_vocab", "zipf", "noise_fields", "numeric",
                     "seed", "rank", "groups", "group_size", "ctr", "missing")

#: kind -> (whether a path is required, options allowed besides COMMON_OPTIONS)
KINDS: dict[str, tuple[bool, tuple[str, ...]]] = {
    "criteo": (True, ("split",)),
    "libfm": (True, ("split", "names", "offsets")),
    "csv": (True, ("schema", "split", "reader")),
    "parquet": (True, ("schema", "split", "reader")),
    "arrow": (True, ("schema", "split", "reader")),
    "movielens100k": (False, ()),
    "frappe": (False, ("cache",)),
    "frappe-nfm": (False, ()),
    "criteo-8k": (False, ()),
    "synthetic": (False, SYNTHETIC_OPTIONS),
}
NAMED = ("frappe", "frappe-nfm", "criteo-8k", "movielens100k", "synthetic")
#: named datasets that cannot take a path (they are defined by a shared folder)
_NO_PATH = ("frappe-nfm", "criteo-8k", "synthetic")


@dataclass(frozen=True)
class DataSpec:
    """A parsed dataset spec.

    Attributes:
        kind: one of ``KINDS``.
        path: the file or folder given after ``KIND:`` (``None`` for named datasets
            that use the shared copy, and for ``synthetic``).
        options: the ``key=value`` options, values as strings.
        text: the spec as written.
    """

    kind: str
    path: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    text: str = ""

    def get_int(self, key: str, default: int | None = None, *, minimum: int | None = None) -> int | None:
        """Option ``key`` as an integer (``default`` when absent); clear error otherwise."""
        if key not in self.options:
            return default
        raw = self.options[key]
        value = _as_int(raw)
        if value is None:
            raise ValueError(f"data spec {self.text!r}: option {key}={raw!r} is not an integer")
        if minimum is not None and value < minimum:
            raise ValueError(f"data spec {self.text!r}: option {key}={value} must be >= {minimum}")
        return value

    def get_float(self, key: str, default: float | None = None) -> float | None:
        if key not in self.options:
            return default
        try:
            return float(self.options[key])
        except ValueError:
            raise ValueError(f"data spec {self.text!r}: option {key}={self.options[key]!r} is not a number") from None

    def get_bool(self, key: str, default: bool) -> bool:
        if key not in self.options:
            return default
        raw = self.options[key].lower()
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"data spec {self.text!r}: option {key}={raw!r} is not a boolean (expected true/false)")

    @property
    def name(self) -> str:
        """A short display name: the kind, plus the path's last part when given."""
        if self.path is None:
            return self.kind
        tail = self.path.rstrip("/").rsplit("/", 1)[-1]
        return f"{self.kind}:{tail}"


def parse_spec(spec: str | DataSpec) -> DataSpec:
    """Parses a dataset spec string (see the module docstring for the grammar).

    Raises:
        ValueError: unknown kind, missing path, unknown or repeated option, or an
            option without ``=``; the message shows the spec and what was expected.
    """
    if isinstance(spec, DataSpec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"data spec must be a non-empty string, got {spec!r}")
    text = spec.strip()
    head, sep, rest = text.partition(":")
    if not sep:
        head, _, rest = text.partition(",")
    kind = head.strip().lower()
    if kind not in KINDS:
        raise ValueError(
            f"data spec {text!r}: unknown kind {head!r} (expected one of {', '.join(KINDS)}, "
            f"as KIND:PATH[,key=value...] or a named dataset)"
        )
    needs_path, extra = KINDS[kind]
    path, options = _split_rest(text, rest)
    if path is not None and kind in _NO_PATH:
        raise ValueError(f"data spec {text!r}: {kind} takes no path, got {path!r} (options are key=value)")
    if needs_path and path is None:
        raise ValueError(f"data spec {text!r}: {kind} needs a path ({kind}:PATH[,key=value...])")
    allowed = COMMON_OPTIONS + extra
    for key in options:
        if key not in allowed:
            raise ValueError(f"data spec {text!r}: unknown option {key!r} for {kind} (expected one of {', '.join(allowed)})")
    if kind in ("csv", "parquet", "arrow") and "schema" not in options:
        raise ValueError(f"data spec {text!r}: {kind} needs a schema file ({kind}:PATH,schema=SCHEMA.json)")
    return DataSpec(kind=kind, path=path, options=options, text=text)


def _as_int(raw: str) -> int | None:
    """``"200000"``, ``"200_000"`` and ``"2e5"`` as integers; ``None`` if not integral."""
    text = raw.replace("_", "").strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


def _split_rest(text: str, rest: str) -> tuple[str | None, dict[str, str]]:
    """Splits ``PATH,k=v,...`` into the path (the first item when it has no ``=``)
    and the options."""
    path: str | None = None
    options: dict[str, str] = {}
    items = [s.strip() for s in rest.split(",")] if rest.strip() else []
    for k, item in enumerate(items):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not eq:
            if k == 0:
                path = item
                continue
            raise ValueError(f"data spec {text!r}: {item!r} is not key=value (a path must come first)")
        key = key.strip().lower()
        if key in options:
            raise ValueError(f"data spec {text!r}: option {key!r} given twice")
        options[key] = value.strip()
    return path, options
