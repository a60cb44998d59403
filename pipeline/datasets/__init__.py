"""Dataset readers behind one small interface (:class:`~pipeline.datasets.base.Dataset`).

>>> from pipeline.datasets import DATASETS, open_dataset
>>> sorted(DATASETS)
['chest', 'coco', 'coco-json', 'deepglobe', 'demo', 'folder', 'fss1000', 'isic', 'pascal']

``open_dataset(name, root)`` validates ``root`` and returns a reader; without ``root`` it uses
``<cache root>/<name>/data`` (the demo dataset is generated there on first use). Layouts and
label conventions: docs/data.md; each benchmark's protocol: :mod:`pipeline.benchmarks`.
"""
from __future__ import annotations

import os
from pathlib import Path

from pipeline.cache import DATASET_NAME_RE
from pipeline.datasets.base import Dataset
from pipeline.datasets.coco import CocoDataset, CocoJsonDataset
from pipeline.datasets.crossdomain import ChestDataset, DeepglobeDataset, IsicDataset
from pipeline.datasets.demo import DemoDataset, generate_demo
from pipeline.datasets.folder import FolderDataset
from pipeline.datasets.fss1000 import Fss1000Dataset
from pipeline.datasets.pascal import PascalDataset
from pipeline.datasets.spec import SPEC_NAME
from pipeline.errors import IGNORE, ConfigError, DatasetError, ImageReadError

#: Registry name -> reader class (a plain dict; readers take ``root`` as their one argument).
DATASETS: dict[str, type[Dataset]] = {
    "coco": CocoDataset,
    "coco-json": CocoJsonDataset,
    "pascal": PascalDataset,
    "folder": FolderDataset,
    "demo": DemoDataset,
    "fss1000": Fss1000Dataset,
    "deepglobe": DeepglobeDataset,
    "isic": IsicDataset,
    "chest": ChestDataset,
}


def open_dataset(name: str, root: str | os.PathLike | None = None, *,
                 cache_dir: str | os.PathLike | None = None, year: int | None = None) -> Dataset:
    """Open dataset ``name`` at ``root``.

    Parameters
    ----------
    name : str
        A key of :data:`DATASETS`, or any other name for the user's own data at ``root``:
        in ``folder`` layout, or named by a ``dataset.toml`` there (a COCO-style json per
        split, :mod:`pipeline.datasets.spec`); the name then keys its cache folder
        ``<cache root>/<name>/`` (e.g. ``open_dataset("camvid", "/data/camvid_folder")``).
    root : path, optional
        Dataset folder; defaults to ``<cache root>/<name>/data`` (for ``demo``: generated
        there when its ``DONE`` marker is absent).
    cache_dir : path, optional
        Cache root (``--cache-dir`` > ``$QGNET_CACHE_DIR`` > ``./cache``).
    year : {2014, 2017}, optional
        COCO only: the release to list (default: the one under ``root``, 2014 when both are).

    Raises
    ------
    ValueError
        Unknown ``name`` (the message lists the known ones), or ``year`` for another dataset.
    DatasetError
        ``root`` does not hold the expected layout (the message says what and where to get it).
    """
    cls = DATASETS.get(name)
    if year is not None and cls is not CocoDataset:
        raise ConfigError(f"--year applies to --dataset coco only, not {name!r}")
    if cls is None:
        return _open_named_folder(name, root, cache_dir=cache_dir)
    if root is None:
        root = cls.default_root(cache_dir=cache_dir)
    return cls(root, year=year) if year is not None else cls(root)


def dataset_root(name: str, root: str | os.PathLike | None = None, *,
                 cache_dir: str | os.PathLike | None = None) -> Path:
    """The absolute root :func:`open_dataset` would read ``name`` from, without opening it
    (no validation, no index files read): ``root`` itself, else the reader's default
    ``<cache root>/<name>/data``. Used to check a cached store against the data it came from
    without paying for e.g. COCO's annotation json."""
    if root is None:
        cls = DATASETS.get(name, FolderDataset)
        root = cls.default_root(cache_dir=cache_dir)
        if name not in DATASETS:
            root = root.parent.parent / name / "data"
    return Path(os.path.realpath(root))


def _open_named_folder(name: str, root, *, cache_dir=None) -> Dataset:
    """Any other name is a dataset of the user's in ``folder`` layout (or described by a
    ``dataset.toml``) with its own cache folder ``<cache root>/<name>/`` (so two such datasets
    never share cached stores)."""
    if not DATASET_NAME_RE.fullmatch(name or ""):
        raise ConfigError(f"unknown dataset {name!r}; known datasets: "
                          f"{', '.join(sorted(DATASETS))}, or any name made of letters, digits, "
                          f"'-', '_' and '.' together with --root DIR for your own data in "
                          f"folder layout (docs/data.md)")
    if root is None:
        root = FolderDataset.default_root(cache_dir=cache_dir).parent.parent / name / "data"
        if not root.is_dir():
            raise ConfigError(f"unknown dataset {name!r}; known datasets: "
                              f"{', '.join(sorted(DATASETS))}. For your own data in folder "
                              f"layout pass --root DIR (then {name!r} names its cache folder)")
    ds = CocoJsonDataset(root) if (Path(root) / SPEC_NAME).is_file() else FolderDataset(root)
    ds.name = name  # the cache key: <cache root>/<name>/
    return ds



__all__ = ["DATASETS", "IGNORE", "ChestDataset", "CocoDataset", "CocoJsonDataset", "Dataset",
           "DatasetError", "DeepglobeDataset", "DemoDataset", "FolderDataset", "Fss1000Dataset",
           "ImageReadError", "IsicDataset", "PascalDataset", "dataset_root", "generate_demo",
           "open_dataset"]
