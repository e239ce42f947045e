"""One daemon per spool: an advisory lock, held from opening the spool to closing it.

A second daemon opening the same file would take the first one's running deliveries for
a crash's leftovers and put them back to pending, and the first would then call their
handlers again while the calls still run. So a daemon takes this lock before it reads or
writes anything, and one that cannot is refused, naming the holder.

The lock is ``flock`` on a file of its own beside the spool (``<spool>.lock``, holding the
holder's pid): the kernel releases it when the process ends, however it ends, so a crash
never leaves it behind. Not on the spool file itself: closing any descriptor of that file
would drop SQLite's own locks on it. A child forked without exec (a plugin's
multiprocessing) closes its copy of the descriptor at once, or it would hold the lock
after the daemon ended. The operator's commands (``frameiod queue``) do not take it: they
are meant to run beside the daemon.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from frameiod.store.base import SpoolError
from frameiod.store.sqlite.files import PRIVATE_MODE, access_problem, make_folder, not_permitted

__all__ = ["SpoolLock", "lock_path"]

_HELD: set[int] = set()
"""The descriptors of the locks this process holds."""


def _close_in_child() -> None:
    # The lock lives as long as any descriptor of its open file does: a forked child's
    # copy goes, the parent's keeps it.
    for descriptor in _HELD:
        os.close(descriptor)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


def lock_path(path: Path) -> Path:
    """The lock file of the spool at ``path``."""
    return path.with_name(f"{path.name}.lock")


class SpoolLock:
    """The lock on one spool, held by this process until `release`."""

    def __init__(self, descriptor: int) -> None:
        self._descriptor: int | None = descriptor

    @classmethod
    def take(cls, path: Path) -> SpoolLock:
        """Lock the spool at ``path`` for this process; raise `SpoolError` naming the other
        frameiod if one holds it, or what to fix if the lock file cannot be made."""
        file = lock_path(path)
        make_folder(path)
        try:
            descriptor = os.open(file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_MODE)
        except OSError as exc:
            # What stops the lock file stops the spool's own files too: say it as for them.
            raise SpoolError(
                access_problem(path) or not_permitted(file, exc.strerror or str(exc))
            ) from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip()
            os.close(descriptor)
            raise SpoolError(
                f"{path}: the spool is in use by another frameiod "
                f"({f'pid {holder}' if holder.isdigit() else 'its pid not yet written'}). "
                "Stop it first, or give this one a [spool] path of its own."
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        _HELD.add(descriptor)
        return cls(descriptor)

    def release(self) -> None:
        """Let another daemon open the spool (closing the descriptor ends the lock)."""
        if self._descriptor is not None:
            _HELD.discard(self._descriptor)
            os.close(self._descriptor)
            self._descriptor = None
