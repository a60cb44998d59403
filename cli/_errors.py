"""One way to fail: the project's own errors become a one-line message, bugs keep their traceback.

:class:`pipeline.errors.QgnetError` (bad option, dataset, store, checkpoint, image) and the
operating system's refusals that a user fixes (a missing file, a read-only or full disk, a
permission) are shown as ``Error: <message>`` with exit code 1. Anything else, a
``KeyError`` or ``RuntimeError`` from a mistake in the code, propagates with its traceback
so that it gets reported and fixed rather than hidden.

Every group of the command line runs its subcommands through :func:`run_friendly`
(:class:`cli._lazy.LazyGroup`); a command invoked on its own can use :func:`friendly_errors`.
"""
from __future__ import annotations

import errno
import functools

import click

from pipeline.errors import QgnetError, worker_message

# OS errors whose message (with the file name) already tells the user what to fix.
_USER_OS_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
                   NotADirectoryError)


def message(exc: BaseException) -> str:
    """The one line shown for ``exc``."""
    if isinstance(exc, OSError) and not isinstance(exc, QgnetError) and exc.filename:
        reason = exc.strerror or str(exc)
        return f"{exc.filename}: {reason}"
    return worker_message(str(exc))  # a FileNotFoundError re-raised by a DataLoader worker


def is_user_error(exc: BaseException) -> bool:
    """True for errors the user fixes (shown as one line), False for bugs (traceback)."""
    if isinstance(exc, (QgnetError, *_USER_OS_ERRORS)):
        return True
    # read-only file system, disk full, file size limit, quota: the path and the reason are enough
    return isinstance(exc, OSError) and exc.errno in {errno.EROFS, errno.ENOSPC, errno.EFBIG,
                                                      errno.EDQUOT, errno.EACCES}


def run_friendly(fn, *args, **kwargs):
    """Call ``fn``; a user error becomes :class:`click.ClickException`."""
    try:
        return fn(*args, **kwargs)
    except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
        raise  # click's own control flow (--help, usage errors, Ctrl-C)
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is the user's to fix
        if is_user_error(exc):
            raise click.ClickException(message(exc)) from None
        raise


def friendly_errors(fn):
    """Decorator form of :func:`run_friendly` for a click command's callback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return run_friendly(fn, *args, **kwargs)

    return wrapper
