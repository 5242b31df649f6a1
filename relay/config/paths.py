"""Whether the places ``[relay]`` names can be used: asked of the system without creating
anything, so that ``relay check`` can ask before ``relay run`` would fail, and ``relay run`` can
say which key is wrong rather than show an OSError.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def describe(error: OSError) -> str:
    """``permission denied``: the system's words, without the errno and the path."""
    text = error.strerror or str(error)
    return text[:1].lower() + text[1:] if text[1:2].islower() else text  # not "aF_UNIX ..."


def directory_problem(directory: Path, files: Iterable[str] = ()) -> str | None:
    """Why relay could not create files in ``directory`` (creating it first if it is missing),
    or write the ``files`` in it that are there already; None when it can."""
    existing = directory
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == directory else f" (it would be created in {existing})"
        return f"permission denied{where}"
    for name in files:
        path = directory / name
        if path.exists() and not os.access(path, os.R_OK | os.W_OK):
            return f"permission denied ({path})"
    return None


def socket_problem(path: Path) -> str | None:
    """Why relay could not listen on a Unix socket at ``path`` (besides another process
    listening there, which takes trying)."""
    if problem := directory_problem(path.parent):
        return problem
    if path.exists() and not path.is_socket():
        return f"{path} is there and is not a socket"
    return None
