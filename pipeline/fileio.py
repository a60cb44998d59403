"""Files written so that they are never half there: atomic JSON, and the temporaries of
killed processes (``<name>.tmp<pid>``) found and removed.

A leaf of the pipeline (it imports no other project module), so every layer can use it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Any, Mapping


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through ``<name>.tmp<pid>`` and a rename (never
    half-written; a killed writer's temporary is found by :func:`remove_stale_temporaries`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename (never half-written)."""
    write_text_atomic(path, json.dumps(plain(obj), indent=2, sort_keys=True) + "\n")



def pid_alive(pid: int) -> bool:
    """True if a process ``pid`` exists on this host (it may belong to another user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def this_host() -> str:
    return socket.gethostname()


_TMP_RE = re.compile(r"(?P<base>.+)\.tmp(?P<pid>\d+)")


def remove_stale_temporaries(*folders: str | os.PathLike, base: str | None = None) -> list[Path]:
    """Delete ``<name>.tmp<pid>`` files and folders in each of ``folders`` whose process
    ``pid`` is dead (what a killed atomic write leaves: ``demo/data.tmp<pid>``, ``last.pt.tmp<pid>``).

    Only entries named exactly ``<name>.tmp<digits>`` (and, with ``base``, ``<base>.tmp<pid>``)
    are touched; those of live processes (a run in progress) are kept. Returns the removed
    paths. Call it at the start of a command, before it writes its own temporary.
    """
    removed: list[Path] = []
    entries = [e for f in map(Path, folders) if f.is_dir() for e in sorted(f.iterdir())]
    for entry in entries:
        m = _TMP_RE.fullmatch(entry.name)
        if not m or (base is not None and m["base"] != base):
            continue
        pid = int(m["pid"])
        if pid == os.getpid() or pid_alive(pid):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def plain(obj: Any) -> Any:
    """Convert paths, tuples and numpy scalars to JSON-friendly values."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    return obj
