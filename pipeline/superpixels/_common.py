"""Input checks and backend discovery shared by the SLIC and Felzenszwalb front ends."""

from __future__ import annotations

import functools

import numpy as np


def check_image(image) -> np.ndarray:
    """HxWx3 uint8 RGB, or HxW uint8 grayscale (stacked to 3 channels) -> C-contiguous
    (H, W, 3) uint8. Anything else raises ValueError saying what was expected."""
    if not isinstance(image, np.ndarray):
        image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(
            f"expected a uint8 image (HxWx3 RGB or HxW grayscale), got dtype {image.dtype}; "
            "convert floats in [0, 1] with skimage.util.img_as_ubyte(image)"
        )
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"expected an HxWx3 RGB or HxW grayscale image, got shape {image.shape}"
            + ("; drop the alpha channel with image[..., :3]" if image.ndim == 3 and image.shape[2] == 4 else "")
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"expected a non-empty image, got shape {image.shape}")
    return np.ascontiguousarray(image)


@functools.cache
def importable(module: str) -> bool:
    """True when ``module`` imports (checked once per process)."""
    try:
        __import__(module)
    except Exception:  # a broken compiled extension counts as absent
        return False
    return True


@functools.cache
def cpu_has_avx2() -> bool:
    """Linux: read the CPU flags; elsewhere assume no AVX2 (the portable fast-slic)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx2" in line for line in f)
    except OSError:
        return False


_MODULES = {"fast-slic": "fast_slic", "numba": "numba", "skimage": "skimage.segmentation"}
_PREFERENCE = {"slic": ("fast-slic", "numba", "skimage"), "felzenszwalb": ("numba", "skimage")}


def available_backends(method: str) -> list[str]:
    """Importable backends of ``method`` ("slic" or "felzenszwalb"), fastest first."""
    if method not in _PREFERENCE:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(_PREFERENCE)}")
    return [b for b in _PREFERENCE[method] if importable(_MODULES[b])]


def resolve_backend(method: str, backend: str) -> str:
    """``backend`` ("auto" or a name) -> the backend that will run, or ValueError."""
    available = available_backends(method)
    if backend == "auto":
        if not available:
            raise ValueError(f"no {method} backend is importable; install numba or scikit-image")
        return available[0]
    if backend not in available:
        known = ", ".join(_PREFERENCE[method])
        raise ValueError(
            f"unknown or unavailable {method} backend {backend!r}; available here: "
            f"{available} (known: {known}; fast-slic installs with pip install 'qgnet[fast]')"
        )
    return backend
