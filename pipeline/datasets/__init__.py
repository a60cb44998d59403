"""Dataset readers behind one small interface (:class:`~pipeline.datasets.base.Dataset`).

>>> from pipeline.datasets import DATASETS, open_dataset
>>> sorted(DATASETS)
['coco', 'demo', 'folder', 'pascal']

``open_dataset(name, root)`` validates ``root`` and returns a reader; without ``root`` it uses
``<cache root>/<name>/data`` (the demo dataset is generated there on first use). Layouts and
label conventions: docs/data.md.
"""
from __future__ import annotations

import os

from pipeline.datasets.base import IGNORE, Dataset, DatasetError, ImageReadError
from pipeline.datasets.coco import CocoDataset
from pipeline.datasets.demo import DemoDataset, generate_demo
from pipeline.datasets.folder import FolderDataset
from pipeline.datasets.pascal import PascalDataset

#: Registry name -> reader class (a plain dict; readers take ``root`` as their one argument).
DATASETS: dict[str, type[Dataset]] = {
    "coco": CocoDataset,
    "pascal": PascalDataset,
    "folder": FolderDataset,
    "demo": DemoDataset,
}


def open_dataset(name: str, root: str | os.PathLike | None = None, *,
                 cache_dir: str | os.PathLike | None = None) -> Dataset:
    """Open dataset ``name`` at ``root``.

    Parameters
    ----------
    name : str
        A key of :data:`DATASETS`.
    root : path, optional
        Dataset folder; defaults to ``<cache root>/<name>/data`` (for ``demo``: generated
        there when its ``DONE`` marker is absent).
    cache_dir : path, optional
        Cache root (``--cache-dir`` > ``$QGNET_CACHE_DIR`` > ``./cache``).

    Raises
    ------
    ValueError
        Unknown ``name`` (the message lists the known ones).
    DatasetError
        ``root`` does not hold the expected layout (the message says what and where to get it).
    """
    try:
        cls = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known datasets: "
                         f"{', '.join(sorted(DATASETS))}") from None
    if root is None:
        root = cls.default_root(cache_dir=cache_dir)
    return cls(root)


__all__ = ["DATASETS", "IGNORE", "CocoDataset", "Dataset", "DatasetError", "DemoDataset",
           "FolderDataset", "ImageReadError", "PascalDataset", "generate_demo", "open_dataset"]
