"""Files that are never torn: every result aelight writes goes through a temporary file beside the
target, is fsynced and renamed over the final name, so a process killed at any moment leaves the
old file or the new one under that name, never a half-written one.

The temporaries are hidden files named ``.<final name>.<8 random characters>.tmp``; a run removes
the ones a killed process left in its own folders (``remove_stale_temporaries``).
"""

import contextlib
import errno
import os
import re
import tempfile
from collections.abc import Iterator

from aelight.errors import NO_SPACE, AelightError

# The mode a file created by open() gets: 0666 less the process's umask (read once, as setting it is
# the only way to read it)
_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
# mkstemp's random part is 8 characters of [a-z0-9_]
TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")


class OutputError(AelightError):
    """A result could not be written (full disk, no permission...)."""


def output_error(err: OSError, path: str, what: str) -> OutputError:
    folder = os.path.dirname(os.path.abspath(path))
    if err.errno in NO_SPACE:
        reason = f"the disk holding {folder} is full"
    else:
        reason = f"{folder}: {err.strerror or err}"
    return OutputError(
        f"could not write {what} {path}: {reason}; nothing under that name was changed. "
        "Free space or choose another output folder, then run the command again"
    )


@contextlib.contextmanager
def atomic_path(path, what: str = "file") -> Iterator[str]:
    """Yields a temporary path beside ``path``; on a clean exit the file written there replaces
    ``path`` (fsync, rename, fsync of the folder). On any error the temporary is removed and
    ``path`` is left as it was; an OSError becomes an ``OutputError`` naming the file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
        os.fchmod(fd, FILE_MODE)  # mkstemp's 0600 is for its secrecy; the file gets the mode open() gives
        os.close(fd)
    except OSError as err:
        raise output_error(err, path, what) from None
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(folder)
    except OSError as err:
        _remove_quietly(tmp)
        raise output_error(err, path, what) from None
    except BaseException:
        _remove_quietly(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb", what: str = "file") -> Iterator:
    """``open`` for writing through ``atomic_path``."""
    with atomic_path(path, what) as tmp:
        with open(tmp, mode) as f:
            yield f


def write_text(path, text: str, what: str = "file") -> None:
    with atomic_open(path, "w", what) as f:
        f.write(text)


def remove_stale_temporaries(folder) -> list[str]:
    """Removes the hidden ``.<name>.XXXXXXXX.tmp`` files that ``atomic_path`` leaves when a process
    is killed mid-write, in ``folder`` only (not below it). Returns the removed paths."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        path = os.path.join(folder, name)
        if TEMPORARY.match(name) and os.path.isfile(path) and not os.path.islink(path):
            _remove_quietly(path)
            removed.append(path)
    return removed


def check_writable(folder, hint: str) -> None:
    """Creates ``folder`` if needed and checks that a file can be written there; else one clear error."""
    folder = os.fspath(folder)
    try:
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise NotADirectoryError(errno.ENOTDIR, "it is a file, not a folder")
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        reason = "the disk is full" if err.errno in NO_SPACE else (err.strerror or str(err))
        raise OutputError(f"output folder {os.path.abspath(folder)} is not writable ({reason}); {hint}") from None


def _fsync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)  # make the rename itself durable
    finally:
        os.close(fd)


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)
