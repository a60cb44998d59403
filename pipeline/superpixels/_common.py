"""Input checks and backend discovery shared by the SLIC and Felzenszwalb front ends."""

from __future__ import annotations

import functools

import numpy as np

from pipeline.errors import ConfigError


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


# The one backend table: method -> its backends, fastest first ("auto" takes the first one
# importable here), and the module each backend needs.
BACKENDS = {"slic": ("fast-slic", "numba", "skimage"), "felzenszwalb": ("numba", "skimage")}
_MODULES = {"fast-slic": "fast_slic", "numba": "numba", "skimage": "skimage.segmentation"}


def _check_method(method: str) -> None:
    if method not in BACKENDS:
        raise ConfigError(f"unknown superpixel method {method!r}; choose one of "
                          f"{', '.join(BACKENDS)}")


def available_backends(method: str) -> list[str]:
    """Importable backends of ``method`` ("slic" or "felzenszwalb"), fastest first."""
    _check_method(method)
    return [b for b in BACKENDS[method] if importable(_MODULES[b])]


def resolve_backend(method: str, backend: str = "auto") -> str:
    """``backend`` ("auto" or a name) -> the concrete backend that will run.

    ``"auto"`` is the first importable one of :data:`BACKENDS` ``[method]``; a named backend
    is checked to implement the method and to be installed. Every refusal is a
    :class:`~pipeline.errors.ConfigError` (a ``ValueError``) naming what to pass instead.
    This is the only resolver: the kernels (``slic``, ``felzenszwalb``) and the stage
    (:mod:`pipeline.superpixel_stage`, whose store key holds the result) call it.
    """
    _check_method(method)
    available = available_backends(method)
    if backend == "auto":
        if not available:
            raise ConfigError(f"no {method} backend is importable (tried "
                              f"{', '.join(BACKENDS[method])}); install numba or scikit-image")
        return available[0]
    if backend not in BACKENDS[method]:
        raise ConfigError(f"backend {backend!r} does not implement {method}; choose auto or one "
                          f"of {', '.join(BACKENDS[method])} (available here: "
                          f"{', '.join(available) or 'none'})")
    if backend not in available:
        raise ConfigError(f"backend {backend!r} is not installed here; available here for {method}: "
                          f"{', '.join(available) or 'none'} (or pass --backend auto; fast-slic "
                          f"installs with pip install 'qgnet[fast]')")
    return backend
