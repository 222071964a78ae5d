"""Atomic file writes: an output either appears complete or not at all."""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator


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
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes owner-only files; outputs are shared like any other
        os.replace(temporary, final_path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
