"""The project's own error types and the ignore label: a leaf module that imports nothing.

Every error a user can fix derives from :class:`QgnetError`. The command line
(:func:`cli._errors.friendly_errors`) turns these into a one-line message that names the
file and what to do; anything else (a ``KeyError`` from a bug, say) keeps its traceback.
Each type also derives from the builtin it used to be (``ValueError``, ``OSError``, ...),
so ``except ValueError`` written before this module existed still catches it.
"""
from __future__ import annotations

IGNORE = 255
"""Label value that carries no loss and no score (PASCAL's object borders, padding)."""


def worker_message(text: str) -> str:
    """The original message of an error re-raised from a torch DataLoader worker.

    torch re-raises a worker's exception as the same type built from the text "Caught E in
    DataLoader worker process N. Original Traceback (...) E: <message>"; the user needs the
    last part only. Any other text is returned as it is."""
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    head, sep, rest = last.partition(": ")
    return rest if sep and head.rsplit(".", 1)[-1].isidentifier() else last


class QgnetError(Exception):
    """Base class: a problem the user can fix; the message says how (one line, also when a
    DataLoader worker raised it: :func:`worker_message`)."""

    def __str__(self) -> str:
        return worker_message(super().__str__())


class ConfigError(QgnetError, ValueError):
    """A bad option, config-file entry or environment variable; the message names it and
    the allowed values."""


class DatasetError(QgnetError, ValueError):
    """A dataset root is wrong or incomplete; the message names the path, what was expected
    there and how to get it."""


class ImageReadError(QgnetError, OSError):
    """One image or mask could not be read (truncated file, missing mask, size mismatch).

    Stages catch it, record ``(id, reason)`` in the store's failure list and go on.
    """


class StoreError(QgnetError, RuntimeError):
    """A store is missing, incomplete, locked or of another kind; the message says which
    command makes it."""


class CheckpointError(QgnetError, ValueError):
    """A checkpoint or model file is unreadable, corrupt or of another kind."""
