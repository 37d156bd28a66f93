"""Natural ("human") ordering of file names and regex-based file discovery.

Miniscope software numbers its movies without zero padding (``msCam1.avi`` ...
``msCam10.avi``, ``0.avi`` ... ``10.avi``), so plain lexicographic sorting would
put movie 10 before movie 2 and silently scramble the recording. Every place in
MPS that orders movie files goes through :func:`natural_sort`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

__all__ = ["natural_key", "natural_sort", "find_files"]

_DIGITS = re.compile(r"(\d+)")

PathT = TypeVar("PathT", bound=str | os.PathLike)


def natural_key(name: str) -> tuple:
    """Sort key that compares digit runs as integers, case-insensitively.

    ``re.split`` with a capturing group always alternates text, number, text,
    ..., starting with (possibly empty) text, so position *i* of every key holds
    the same type and tuples compare without type errors. Names whose keys are
    equal (``"a1"`` vs ``"A01"``) keep their input order because Python's sort
    is stable.
    """
    parts = _DIGITS.split(str(name).casefold())
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


def natural_sort(paths: Iterable[PathT]) -> list[PathT]:
    """Return ``paths`` naturally sorted by their full path string (stable)."""
    return sorted(paths, key=lambda p: natural_key(os.fspath(p)))


def find_files(
    folder: str | os.PathLike, pattern: str = r".*\.avi$", flags: int = re.IGNORECASE
) -> list[Path]:
    """Regular files directly inside ``folder`` whose *name* matches ``pattern``.

    The pattern is applied with :func:`re.fullmatch` (the whole file name must
    match, so ``msCam\\d+\\.avi`` does not pick up ``old_msCam1.avi.bak``) and,
    by default, case-insensitively because Miniscope data often comes from
    Windows where ``MSCAM1.AVI`` and ``msCam1.avi`` are the same file. The
    search is not recursive. The result is naturally sorted.

    Raises
    ------
    ValueError
        If ``folder`` is missing or unreadable, the pattern is invalid, or no
        file matches.
    """
    folder = Path(folder)
    try:
        regex = re.compile(pattern, flags)
    except re.error as exc:
        raise ValueError(f"invalid file pattern {pattern!r}: {exc}") from exc
    if not folder.is_dir():
        raise ValueError(f"folder {str(folder)!r} does not exist or is not a folder (pattern {pattern!r})")
    try:
        entries = list(folder.iterdir())
    except OSError as exc:
        raise ValueError(f"folder {str(folder)!r} is not readable ({exc}); pattern {pattern!r}") from exc
    found = [p for p in entries if regex.fullmatch(p.name) and p.is_file()]
    if not found:
        raise ValueError(f"no file in folder {str(folder)!r} matches pattern {pattern!r}")
    return natural_sort(found)
