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
# DetCon's FH (scale 1000, min_size 1000) gives the reverse. With scale 100 / min_size 100
# and the prior's patch rule (model.prior.patch_rule: 1/8 cell .. 1/16 view, slots filled),
# SLIC-100's are the larger of the patches the local loss uses, on CamVid and on the demo
# at crop 224, median and pixel-weighted, with the same slots filled (docs/prior.md "Patch
# regime", bench/patch_area.py). Changing a value changes the store key (a new store path).
DEFAULTS = {
    "slic": {"n_segments": 100, "compactness": 10.0, "max_iter": 10},
    "felzenszwalb": {"scale": 100.0, "sigma": 0.8, "min_size": 100},
}

_METHODS = {"slic": slic, "felzenszwalb": felzenszwalb}


def segment(image: np.ndarray, method: str = "slic", **params) -> np.ndarray:
    """Dispatch to ``slic`` or ``felzenszwalb`` with their keyword options ``params``."""
    if method not in _METHODS:
        raise ValueError(f"unknown superpixel method {method!r}; expected one of {sorted(_METHODS)}")
    return _METHODS[method](image, **params)


__all__ = ["BACKENDS", "DEFAULTS", "available_backends", "felzenszwalb", "resolve_backend", "segment", "slic"]
