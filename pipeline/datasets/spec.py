"""``dataset.toml``: a folder that names a dataset's files instead of holding them.

A COCO-style export (labelme, CVAT, Label Studio) is one instances json per split plus an
image folder, anywhere on disk. A folder holding this file is a dataset root like any other,
so every stage (which reopens a reader from a dataset name and a root) reads it::

    format = "coco-json"

    [splits.train]
    json = "/data/shop/train/annotations.json"   # relative paths: to this file's folder
    images = "/data/shop/train/images"           # default: the json's folder

    [splits.val]
    json = "/data/shop/val/annotations.json"
    images = "/data/shop/val/images"

Write it yourself and pass ``--dataset NAME --root FOLDER``, or let ``qgnet-prep masks`` /
``superpixels`` write it from ``--train-json A --train-images DIR --val-json B
--val-images DIR`` into ``<cache>/<NAME>/data/`` (:func:`prepare_json_dataset`); later
commands then need only ``--dataset NAME``.
"""
from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Mapping

from pipeline.errors import ConfigError, DatasetError

SPEC_NAME = "dataset.toml"
FORMATS = ("coco-json",)
SPLIT_NAMES = ("train", "val")


def read_spec(root: str | os.PathLike) -> dict | None:
    """The ``dataset.toml`` of ``root`` as ``{"format", "splits": {split: (json, images)}}``
    (absolute paths), or None when ``root`` has none.

    Raises
    ------
    DatasetError
        The file is not valid TOML, names an unknown format, no split, or a split without a
        ``json`` entry; the message names the file and the key.
    """
    path = Path(root) / SPEC_NAME
    if not path.is_file():
        return None
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path} is not valid TOML ({exc}); see docs/data.md, "
                           f"'Your own COCO-style json'") from None
    fmt = data.get("format")
    if fmt not in FORMATS:
        raise DatasetError(f"{path}: format = {fmt!r}; known formats: {', '.join(FORMATS)}")
    splits = data.get("splits")
    if not isinstance(splits, dict) or not splits:
        raise DatasetError(f"{path}: no [splits.NAME] table; give one per split, each with "
                           f"json = ... and optionally images = ...")
    out = {}
    for name, entry in splits.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("json"), str):
            raise DatasetError(f"{path}: [splits.{name}] needs json = \"path/to/file.json\"")
        unknown = sorted(set(entry) - {"json", "images"})
        if unknown:
            raise DatasetError(f"{path}: [splits.{name}] has unknown key(s) {unknown}; "
                               f"known: json, images")
        j = (path.parent / entry["json"]).expanduser()
        images = entry.get("images")
        d = (path.parent / images).expanduser() if isinstance(images, str) else j.parent
        if not j.is_file():
            raise DatasetError(f"{path}: [splits.{name}] json {j} does not exist")
        if not d.is_dir():
            raise DatasetError(f"{path}: [splits.{name}] images folder {d} does not exist")
        out[name] = (j.resolve(), d.resolve())
    return {"format": fmt, "splits": out, "path": path}


def format_spec(splits: Mapping[str, tuple[Path, Path | None]], *, fmt: str = "coco-json") -> str:
    """The text of a ``dataset.toml`` (absolute paths) for ``{split: (json, images)}``."""
    lines = ["# written by qgnet-prep from --<split>-json / --<split>-images; docs/data.md",
             f"format = {json.dumps(fmt)}", ""]
    for split, (j, d) in splits.items():
        lines.append(f"[splits.{split}]")
        lines.append(f"json = {json.dumps(str(Path(j).resolve()), ensure_ascii=False)}")
        if d is not None:
            lines.append(f"images = {json.dumps(str(Path(d).resolve()), ensure_ascii=False)}")
        lines.append("")
    return "\n".join(lines)


def prepare_json_dataset(name: str, *, cache_dir=None,
                         splits: Mapping[str, tuple[str | None, str | None]]) -> Path:
    """Write ``<cache>/<name>/data/dataset.toml`` for the splits given on the command line and
    return that folder (the dataset's root for every stage).

    ``splits`` maps ``train`` / ``val`` to ``(json, images)`` as given (``None`` = not given).
    An existing file that says the same is kept; one that names other files is refused.

    Raises
    ------
    ConfigError
        An ``--X-images`` without its ``--X-json``, a json or folder that does not exist, or
        an existing ``dataset.toml`` that names other files (the message says how to go on).
    """
    from pipeline.cache import dataset_cache_dir
    from pipeline.fileio import remove_stale_temporaries, write_text_atomic

    given = {}
    for split, (j, d) in splits.items():
        if j is None:
            if d is not None:
                raise ConfigError(f"--{split}-images needs --{split}-json (the instances json "
                                  f"whose file_name entries are relative to it)")
            continue
        jp = Path(j).expanduser()
        if not jp.is_file():
            raise ConfigError(f"--{split}-json {j} does not exist; pass a COCO-style "
                              f"instances json (images, annotations, categories)")
        dp = Path(d).expanduser() if d is not None else None
        if dp is not None and not dp.is_dir():
            raise ConfigError(f"--{split}-images {d} is not a folder")
        given[split] = (jp, dp)
    if not given:
        raise ConfigError("no --train-json / --val-json given")
    folder = dataset_cache_dir(name, cache_dir=cache_dir) / "data"
    path = folder / SPEC_NAME
    text = format_spec(given)
    if path.is_file():
        old = path.read_text()
        if old == text:
            return folder
        raise ConfigError(f"{path} already describes dataset {name!r} with other files; use "
                          f"another --dataset name for these, or delete {path} (and the "
                          f"stores beside it) to replace them")
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder, base=SPEC_NAME)
    write_text_atomic(path, text)
    return folder
