"""``qgnet-predict``: find the supports' object in your own photos.

Thin: collect the files, check the supports, call :class:`model.predict.Segmenter`, write
one 0/255 PNG mask per query (and an overlay with ``--overlay``) plus ``summary.csv``.
An unreadable query is reported, skipped and listed in summary.csv; the exit code is then
3 (0 when every query was segmented). No input file is ever written: an ``--out`` folder
where a mask, overlay or summary.csv would land on a query, a support, a support mask or
the model (``--out photos/ photos/``) is refused before anything is computed.
"""
from __future__ import annotations

import csv
import glob
import os
import time
from pathlib import Path

import click

from cli._errors import friendly_errors

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm"}
EXIT_SOME_FAILED = 3


def collect_queries(items: tuple[str, ...]) -> list[Path]:
    """Files, folders (their images, sorted, not recursive) and globs -> image paths."""
    from pipeline.errors import ConfigError

    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ConfigError(f"{p}: no images in this folder (looked for "
                                  f"{', '.join(sorted(IMAGE_SUFFIXES))})")
            out += found
        elif p.is_file():
            out.append(p)
        elif glob.has_magic(item):
            found = sorted(Path(f) for f in glob.glob(item) if Path(f).is_file())
            if not found:
                raise ConfigError(f"{item}: the pattern matches no file")
            out += found
        else:
            raise ConfigError(f"{p}: no such query file or folder")
    return list(dict.fromkeys(out))  # once each, in order


def output_names(paths: list[Path]) -> list[str]:
    """A unique file stem per query (``x``, ``x-2`` ... when two folders hold ``x.jpg``)."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        n = seen.get(p.stem, 0) + 1
        seen[p.stem] = n
        names.append(p.stem if n == 1 else f"{p.stem}-{n}")
    return names


def output_files(out_dir: Path, names: list[str], *, with_overlay: bool) -> list[Path]:
    """Every file the command writes into ``out_dir`` for queries named ``names``."""
    files = [out_dir / f"{n}.png" for n in names]
    if with_overlay:
        files += [out_dir / f"{n}.overlay.jpg" for n in names]
    return files + [out_dir / "summary.csv"]


def refuse_overwriting_inputs(outputs: list[Path], inputs: list[Path], *, out: str) -> None:
    """:class:`ConfigError` if writing any of ``outputs`` would replace one of ``inputs``.

    Files are compared as the file system sees them (device and inode, following links), so
    ``photos/q1.png``, ``./photos/../photos/q1.png``, a symlink to it and a hard link all
    count as the same photo."""
    from pipeline.errors import ConfigError

    def key(p: Path):
        try:
            st = os.stat(p)
        except OSError:  # not there (yet): nothing to overwrite
            return None
        return st.st_dev, st.st_ino

    given = {k: p for p in inputs if (k := key(p)) is not None}
    hits = [(o, given[k]) for o in outputs if (k := key(o)) is not None and k in given]
    if hits:
        o, i = hits[0]
        more = f" (and {len(hits) - 1} more)" if len(hits) > 1 else ""
        raise ConfigError(f"--out {out}: writing {o.name} would overwrite the input {i}{more}; "
                          f"masks are named after their queries (NAME.png), so pass another "
                          f"--out folder")


def overlay(image, mask, *, color=(255, 40, 40), alpha: float = 0.5):
    """The image with the mask tinted (H x W x 3 uint8)."""
    import numpy as np

    out = image.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(color, np.float32)
    return out.round().astype(np.uint8)


def read_support_mask(path: Path):
    """A support mask file -> H x W (or H x W x 3 for an RGB file, refused later)."""
    import numpy as np
    from PIL import Image

    from pipeline.errors import ConfigError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGB", "RGBA"):
                return np.asarray(im.convert("RGB"))
            if im.mode not in ("L", "P", "1", "I", "I;16"):
                im = im.convert("L")
            return np.asarray(im).astype(np.int64) if im.mode.startswith("I") else np.asarray(im)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such support mask") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the support mask ({exc})") from None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="A bundle from `qgnet-export` (model.qgnet) or a best.pt of `qgnet-train fss`.")
@click.option("--support", "supports", multiple=True, required=True,
              type=click.Path(dir_okay=False), help="Support image (repeat for K shots).")
@click.option("--support-mask", "support_masks", multiple=True, required=True,
              type=click.Path(dir_okay=False),
              help="Its mask, same size: object non-zero, 0 background, 255 ignored; a 0/255 "
                   "mask has its object at 255 (one per --support, in the same order).")
@click.option("--mask-value", type=click.IntRange(0, 255),
              help="The object's value in a multi-class mask (default: any non-zero value).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for NAME.png masks (0/255, query size) and summary.csv.")
@click.option("--overlay", "with_overlay", is_flag=True, help="Also write NAME.overlay.jpg.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=4, show_default=True,
              help="Queries per forward pass.")
@click.option("--threads", type=click.IntRange(1), help="torch CPU threads (default: torch's).")
@click.option("--amp/--no-amp", default=True, show_default=True, help="bf16 autocast on CUDA.")
@click.option("--progress/--no-progress", default=True)
@click.argument("queries", nargs=-1, required=True)
@friendly_errors
def main(model_path, supports, support_masks, mask_value, out, with_overlay, device, batch_size,
         threads, amp, progress, queries):
    """Segment the supports' object in every QUERY (files, folders or globs).

    \b
    qgnet-predict --model model.qgnet --support a.jpg --support-mask a.png \\
        --out preds/ photos/
    """
    from pipeline.errors import ConfigError

    if len(supports) != len(support_masks):
        raise ConfigError(f"{len(supports)} --support but {len(support_masks)} --support-mask; "
                          f"give one mask per support image, in the same order")
    paths = collect_queries(queries)
    out_dir = Path(out)
    names = output_names(paths)
    refuse_overwriting_inputs(
        output_files(out_dir, names, with_overlay=with_overlay),
        [*paths, *map(Path, supports), *map(Path, support_masks), Path(model_path)], out=out)
    import numpy as np
    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    from model.predict import Segmenter
    from pipeline.datasets._image import load_rgb
    from pipeline.errors import ImageReadError

    if threads:
        torch.set_num_threads(int(threads))
    seg = Segmenter.load(model_path, device=device, amp=amp)
    s_imgs = [load_rgb(p) for p in supports]
    s_masks = [read_support_mask(Path(p)) for p in support_masks]
    s, m = seg.prepare_supports(s_imgs, s_masks, mask_value=mask_value,
                                names=[str(p) for p in support_masks])
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, failed = [], 0
    bar = tqdm(total=len(paths), unit="img", disable=not progress, dynamic_ncols=True)
    for i in range(0, len(paths), batch_size):
        batch = list(zip(paths[i:i + batch_size], names[i:i + batch_size], strict=True))
        images, ok = [], []
        for p, name in batch:
            try:
                images.append(load_rgb(p))
                ok.append((p, name))
            except ImageReadError as exc:
                failed += 1
                rows.append({"query": str(p), "mask": "", "foreground_fraction": "",
                             "seconds": "", "status": f"skipped: {exc}"})
                click.echo(f"skipped {p}: {exc}", err=True)
        if images:
            t0 = time.perf_counter()
            preds = seg.predict_prepared(images, s, m, batch_size=batch_size)
            secs = (time.perf_counter() - t0) / len(images)
            for (p, name), image, pred in zip(ok, images, preds, strict=True):
                mask_path = out_dir / f"{name}.png"
                Image.fromarray(pred.astype(np.uint8) * 255).save(mask_path)
                if with_overlay:
                    Image.fromarray(overlay(image, pred)).save(out_dir / f"{name}.overlay.jpg",
                                                               quality=90)
                rows.append({"query": str(p), "mask": str(mask_path),
                             "foreground_fraction": f"{pred.mean():.6f}",
                             "seconds": f"{secs:.4f}", "status": "ok"})
        bar.update(len(batch))
    bar.close()
    with open(out_dir / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["query", "mask", "foreground_fraction", "seconds",
                                          "status"])
        w.writeheader()
        w.writerows(rows)
    done = len(paths) - failed
    click.echo(f"{done} masks in {out_dir}/ ({failed} skipped); summary: {out_dir / 'summary.csv'}")
    if failed:
        raise SystemExit(EXIT_SOME_FAILED)


if __name__ == "__main__":
    main()
