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


class QgnetError(Exception):
    """Base class: a problem the user can fix; the message says how."""


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
