"""Atomic file writes: an output either appears complete or not at all, with normal permissions; folders are
swapped in one step and locked while a process writes into them."""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import tempfile
from typing import Iterator

from rnca_nnunet.errors import InputError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None

_AT_FDCWD, _RENAME_EXCHANGE = -100, 2
# the system's answers to a write that no retry will fix: the user must free space or choose another place
_CANNOT_WRITE = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG}


@contextlib.contextmanager
def _named_write_failures(path: str) -> Iterator[None]:
    """A full disk, a read-only or forbidden folder while writing `path`: one line naming it."""
    try:
        yield
    except OSError as error:
        if error.errno not in _CANNOT_WRITE:
            raise
        raise InputError(f"{path}: cannot be written ({error.strerror}); free space or choose a writable output "
                         f"folder (nothing partial was left)") from None


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
    with _named_write_failures(final_path):
        os.makedirs(folder, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".partial-", suffix=ending or os.path.splitext(final_path)[1],
                                             dir=folder)
    os.close(handle)
    try:
        with _named_write_failures(final_path):
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
    with _named_write_failures(final_path):
        os.makedirs(folder, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".partial-", dir=folder)
    name = os.path.basename(final_path)
    try:
        with _named_write_failures(final_path):
            yield os.path.join(staging, name)
            written = sorted(os.listdir(staging), key=lambda f: f == name)
            for file in written:
                _shared_permissions(os.path.join(staging, file))
                os.replace(os.path.join(staging, file), os.path.join(folder, file))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_writable_folder(folder: str, flag: str) -> None:
    """Make the output folder `flag` names, and write a file into it: a read-only, full or wrong-kind path is one
    line now, not a traceback after the first case was predicted."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise InputError(f"{flag} {folder} is a file; give a folder")
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-") as probe:
            probe.write(b"x")
            probe.flush()
    except OSError as error:
        raise InputError(f"{flag} {folder}: cannot write there ({error.strerror}); choose a writable folder with "
                         f"free space") from None


def shared_folder_permissions(path: str) -> None:
    """Give a folder made by mkdtemp (0700) and its files the permissions of any other output."""
    _shared_permissions(path, directory=True)
    for file in os.listdir(path):
        full = os.path.join(path, file)
        _shared_permissions(full, directory=os.path.isdir(full))


def replace_folder(staging: str, folder: str) -> None:
    """Move a fully written staging folder into place, replacing an older folder of that name. Where the system
    can (Linux's renameat2), the two are exchanged in one step, so a reader finds the old folder or the new
    one, never none; elsewhere there is a moment with none."""
    if os.path.isdir(folder) and _exchange(staging, folder):
        shutil.rmtree(staging, ignore_errors=True)  # it holds the old folder now
        return
    old = None
    if os.path.exists(folder):
        old = tempfile.mkdtemp(prefix=".rnca-old-", dir=os.path.dirname(os.path.abspath(folder)))
        os.rmdir(old)
        os.replace(folder, old)
    os.replace(staging, folder)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _exchange(first: str, second: str) -> bool:
    """Swap two paths atomically; False where the C library or the file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0


def folder_identity(folder: str) -> tuple:
    """What a path names right now, to see whether it was replaced while it was read: device and inode, and the
    change time, which every rename sets (a folder made after the old one was deleted may reuse its inode)."""
    try:
        status = os.stat(folder)
    except OSError:
        return ()
    return status.st_dev, status.st_ino, status.st_ctime_ns


@contextlib.contextmanager
def folder_lock(folder: str, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `folder` itself (flock on its descriptor, so no file is added to it) while
    `what` runs; a second one is refused at once instead of deleting the first one's files."""
    if fcntl is None:
        yield
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{folder}: another {what} is running in this folder; wait for it to finish "
                             f"(two at once would delete each other's files)") from None
        yield
    finally:
        os.close(descriptor)
