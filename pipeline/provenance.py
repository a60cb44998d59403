"""Provenance: what every store and checkpoint records about how it was made."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Mapping

from pipeline.fileio import plain


def package_versions() -> dict[str, str]:
    """Versions of the packages that can change a stored result."""
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in ("qgnet", "numpy", "scikit-image", "numba", "zarr", "dask", "fast-slic",
                 "torch", "torchvision", "pycocotools", "pillow", "scipy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def provenance(params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What every store and checkpoint records: parameters, versions, command, time."""
    return {
        "params": plain(dict(params or {})),
        "versions": package_versions(),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
