"""Superpixel kernels: pure functions, (H, W, 3) uint8 image in, (H, W) uint16 labels out.

    from pipeline.superpixels import slic, felzenszwalb, segment, available_backends, DEFAULTS

numba and the backends are imported on first use, so importing this package is cheap.
"""

from __future__ import annotations

import numpy as np

from ._common import BACKENDS, available_backends, resolve_backend
from .felzenszwalb import felzenszwalb
from .slic import slic

# Default parameters per method, as plain dicts (the CLI shows them; the store hashes
# them). The backend is not a parameter here: record resolve_backend(method, backend)
# next to results, because backends give different (equally valid) labels.
# The paper's patch regime (Figure 4, section 5.4): SLIC patches larger than Felzenszwalb's.
# DetCon's FH (scale 1000, min_size 1000) gives the reverse; scale 300 / min_size 250 makes
# the median FH patch 0.4-0.8x the SLIC-100 one (docs/prior.md "Patch regime",
# bench/patch_area.py). Changing a value changes the store key (a new store path).
DEFAULTS = {
    "slic": {"n_segments": 100, "compactness": 10.0, "max_iter": 10},
    "felzenszwalb": {"scale": 300.0, "sigma": 0.8, "min_size": 250},
}

_METHODS = {"slic": slic, "felzenszwalb": felzenszwalb}


def segment(image: np.ndarray, method: str = "slic", **params) -> np.ndarray:
    """Dispatch to ``slic`` or ``felzenszwalb`` with their keyword options ``params``."""
    if method not in _METHODS:
        raise ValueError(f"unknown superpixel method {method!r}; expected one of {sorted(_METHODS)}")
    return _METHODS[method](image, **params)


__all__ = ["BACKENDS", "DEFAULTS", "available_backends", "felzenszwalb", "resolve_backend", "segment", "slic"]
