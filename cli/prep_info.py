"""``qgnet-prep info STORE_OR_DIR``: print what a store, an episode folder or a cache folder holds.

By default every chunk of every store is read once (:meth:`pipeline.store.ShardedStore.verify`):
a file that does not decode is listed with the images it holds and the command that
rebuilds the store, and the exit code is 1. ``--no-verify`` skips the reading (the
summary then comes from the metadata alone).
"""
from __future__ import annotations

import json
from pathlib import Path

import click

SHOW_FAILURES = 5


def _is_store(path: Path) -> bool:
    from pipeline.store import is_store

    return is_store(path)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def verify_lines(store) -> tuple[list[str], int]:
    """``(lines, number of damaged files)`` of :meth:`ShardedStore.verify` on ``store``."""
    problems = store.verify()
    if not problems:
        return [f"verified:   every chunk read back ({store.n_shards} shards of "
                f"{len(store.attrs.get('extras', [])) + 3} arrays)"], 0
    lines = [f"DAMAGED:    {len(problems)} file(s) cannot be read; {store.damage_hint()}"]
    lines += [f"  {p['file']}" + (f" (images {p['images']})" if p["images"] else "")
              + f": {p['error']}" for p in problems]
    return lines, len(problems)


def store_lines(path: Path, *, all_failures: bool = False, verify: bool = True
                ) -> tuple[list[str], int]:
    """Summary of one store: parameters, counts, failures, size; per-class counts for masks;
    with ``verify``, whether every chunk reads back. Returns ``(lines, damaged files)``.

    Counts cover the finished shards only (an interrupted store's other rows hold the
    sizes of its layout, not results); ``all_failures`` lists every failure, not the first 5.
    """
    from pipeline.store import ShardedStore

    store = ShardedStore.open(path)
    s = store.summary()
    attrs = store.attrs
    lines = [f"store:      {s['path']}",
             f"kind:       {s['kind']}  dataset: {s['dataset']}  split: {s['split']}"]
    if s["kind"] == "superpixels":
        lines.append(f"method:     {attrs.get('method')}  backend: {attrs.get('backend')}")
    lines += [f"params:     {json.dumps(s['params'], sort_keys=True)}",
              f"root:       {attrs.get('root')}",
              f"images:     {s['images']} ({s['images_written']} written, {s['failures']} failed"
              + ("" if store.complete else f", {s['images'] - s['images_in_done_shards']} "
                                           f"not computed yet") + ")",
              f"shards:     {s['shards_done']} done, {store.shard_size} images per shard"
              + ("" if store.complete else "  INCOMPLETE: re-run the command below to resume"),
              f"on disk:    {_fmt_bytes(s['bytes_on_disk'])} "
              f"({_fmt_bytes(s['bytes_per_image'])} per image)",
              f"command:    {s['command']}",
              f"created:    {s['created']}"]
    if s["kind"] == "superpixels" and "n_segments" in attrs.get("extras", []):
        n = store.extra("n_segments")
        ok = n[store.finished_rows() & (store.hw[:, 0] > 0)]
        if ok.size:
            lines.append(f"segments:   mean {ok.mean():.1f}, min {ok.min()}, max {ok.max()}")
    if s["kind"] == "masks" and "class_pixels" in attrs.get("extras", []):
        from pipeline.mask_stage import MIN_CLASS_PIXELS, class_image_counts

        counts = class_image_counts(store)
        names = ["background", *attrs.get("class_names", [])]
        lines.append(f"images with >= {MIN_CLASS_PIXELS} px of each class:")
        for c in range(1, len(counts)):
            name = names[c] if c < len(names) else str(c)
            lines.append(f"  {c:3d} {name:<20s} {int(counts[c])}")
    failures = store.failures
    if failures:
        shown = failures if all_failures else failures[:SHOW_FAILURES]
        lines.append(f"failures ({len(failures)}"
                     + ("):" if len(shown) == len(failures) else f", first {len(shown)}; "
                        f"--failures lists all):"))
        lines += [f"  {f['id']}: {f['reason']}" for f in shown]
    damaged = 0
    if verify:
        more, damaged = verify_lines(store)
        lines += more
    return lines, damaged


def episodes_lines(path: Path) -> list[str]:
    """An episode folder: its folds and classes, the counts of every file
    (:func:`pipeline.episode_stage.describe`) and the command that made it; a file that cannot be
    described is listed with its arrays."""
    import numpy as np

    from pipeline.episode_stage import describe

    lines = [f"episodes folder: {path}"]
    info = json.loads((path / "folds.json").read_text())
    for part in [path / "folds.json", *sorted(path.glob("*.npz"))]:
        try:
            lines += describe(part).splitlines()
        except Exception as e:  # noqa: BLE001 - a foreign or older file: list what it holds
            if part.suffix == ".npz":
                with np.load(part) as z:
                    arrays = ", ".join(f"{k} {z[k].dtype}{list(z[k].shape)}" for k in z.files)
                lines.append(f"{part.name}: not an episode file ({type(e).__name__}: {e}); "
                             f"arrays: {arrays}")
            else:
                lines.append(f"{part.name}: could not be read ({type(e).__name__}: {e})")
    if info.get("command"):
        lines.append(f"command:    {info['command']}")
    if info.get("created"):
        lines.append(f"created:    {info['created']}")
    return lines


def folder_lines(path: Path, *, verify: bool = True) -> tuple[list[str], int]:
    """A folder holding stores (e.g. ``cache/coco``): one line per store found (a damaged
    one says so and the listing goes on). Returns ``(lines, damaged stores)``."""
    from pipeline.store import ShardedStore, StoreError

    stores = sorted(p for p in path.rglob("*.zarr") if _is_store(p))
    lines, damaged = [], 0
    for p in stores:
        try:
            store = ShardedStore.open(p)
            s = store.summary()
            problems = store.verify() if verify else []
        except StoreError as exc:
            lines.append(f"{p}: DAMAGED: {exc}")
            damaged += 1
            continue
        lines.append(f"{p}: {s['kind']} {s['dataset']}/{s['split']}, {s['images']} images, "
                     f"shards {s['shards_done']}, {s['failures']} failed, "
                     f"{_fmt_bytes(s['bytes_per_image'])} per image"
                     + ("" if not verify else ", every chunk read back" if not problems else
                        f", DAMAGED: {len(problems)} file(s) cannot be read, e.g. "
                        f"{problems[0]['file']}; {store.damage_hint()}"))
        damaged += bool(problems)
    for d in sorted({f.parent for f in path.rglob("folds.json")}):
        lines.append(f"{d}: episodes ({len(list(d.glob('*.npz')))} .npz files)")
    return lines, damaged


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("store_or_dir", type=click.Path(exists=True, path_type=Path))
@click.option("--failures", "all_failures", is_flag=True,
              help=f"List every failed image of a store (default: the first {SHOW_FAILURES}).")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Read every chunk of every store once and list the files that cannot be "
                   "read (exit code 1 if any).")
def info(store_or_dir: Path, all_failures: bool, verify: bool):
    """Print what a store (.zarr), an episode folder or a cache folder holds."""
    path = store_or_dir
    damaged = 0
    if _is_store(path):
        lines, damaged = store_lines(path, all_failures=all_failures, verify=verify)
    elif path.is_dir() and (path / "folds.json").is_file():
        lines = episodes_lines(path)
    elif path.is_dir():
        lines, damaged = folder_lines(path, verify=verify)
        if not lines:
            raise click.ClickException(f"{path} holds no qgnet store (a .zarr folder with ids.json) "
                                       f"and no episode folder (folds.json + .npz files)")
    else:
        raise click.ClickException(f"{path} is not a qgnet store, episode folder or cache folder")
    for line in lines:
        click.echo(line)
    if damaged:
        raise click.ClickException(f"{damaged} damaged {'file' if _is_store(path) else 'store'}"
                                   f"{'s' if damaged > 1 else ''} in {path} (listed above)")
