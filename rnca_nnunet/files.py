"""Atomic file writes: an output either appears complete or not at all, with normal permissions."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator


def _shared_permissions(path: str, directory: bool = False) -> None:
    """mkstemp/mkdtemp make owner-only files; outputs are shared like any other file (umask honoured)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_path(final_path: str, ending: str = "") -> Iterator[str]:
    """Yield a temporary path beside `final_path` (same `ending`, so writers pick the same format);
    it replaces `final_path` only if the block finishes."""
    folder = os.path.dirname(os.path.abspath(final_path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".partial-", suffix=ending or os.path.splitext(final_path)[1],
                                         dir=folder)
    os.close(handle)
    try:
        yield temporary
        _shared_permissions(temporary)
        os.replace(temporary, final_path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


@contextlib.contextmanager
def atomic_folder_path(final_path: str) -> Iterator[str]:
    """Yield `final_path`'s name inside a hidden staging folder beside it. Everything written there (the file
    and any side files a writer adds, e.g. the spacing .json of nnU-Net's Tiff3DIO) moves into place when the
    block finishes, the file itself last, so its presence means the case is complete."""
    folder = os.path.dirname(os.path.abspath(final_path))
    os.makedirs(folder, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".partial-", dir=folder)
    name = os.path.basename(final_path)
    try:
        yield os.path.join(staging, name)
        written = sorted(os.listdir(staging), key=lambda f: f == name)
        for file in written:
            _shared_permissions(os.path.join(staging, file))
            os.replace(os.path.join(staging, file), os.path.join(folder, file))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def shared_folder_permissions(path: str) -> None:
    """Give a folder made by mkdtemp (0700) and its files the permissions of any other output."""
    _shared_permissions(path, directory=True)
    for file in os.listdir(path):
        full = os.path.join(path, file)
        _shared_permissions(full, directory=os.path.isdir(full))
