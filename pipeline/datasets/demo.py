"""The built-in demo dataset: textured shapes on real photo backgrounds, generated offline.

20 classes = 5 shapes x 4 appearances, each class with its own colour pair. Class ids are
ordered so that every group of five consecutive ids (a PASCAL-style fold: ids 5i+1..5i+5)
holds each shape once and mixes the appearances: a novel class in a fold is always an unseen
*combination* of a seen shape and a seen appearance, never an unseen shape.

Each image (PNG, H in 200..280, W in 280..360) shows 2-4 objects of at least 2 classes over a
crop of one of scikit-image's sample photos (brick, grass, gravel, coffee, astronaut, chelsea,
rocket, immunohistochemistry, hubble_deep_field, moon; grayscale ones tinted). Objects are
placed so that at most a quarter of one is hidden by the ones drawn after it; the mask is the
visible part, 0 = background (no ignore pixels). Classes are dealt from a shuffled deck per
split, so every class appears about equally often.

The output is the folder layout (see :mod:`pipeline.datasets.folder`) with ``train.txt``,
``val.txt``, ``classes.txt``, ``README.md`` and a ``DONE`` marker written last. The same
arguments give byte-identical files (PNG only, no timestamps).
"""
from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from pipeline.datasets._image import voc_palette
from pipeline.datasets.folder import FolderDataset

log = logging.getLogger(__name__)

DEMO_VERSION = 1
SHAPES = ("disc", "square", "triangle", "star", "ring")
APPEARANCES = ("solid", "stripes", "checker", "dots")
# id = 5 * f + j + 1 -> shape j, appearance (f + j) % 4: every fold holds all five shapes.
CLASSES = tuple((SHAPES[j], APPEARANCES[(f + j) % 4]) for f in range(4) for j in range(5))
CLASS_NAMES = tuple(f"{app}_{shape}" for shape, app in CLASSES)
# Hue of each class (0..1), spread so that neighbouring ids differ.
_HUES = tuple(((k * 7) % 20) / 20.0 for k in range(20))
BACKGROUNDS = ("brick", "grass", "gravel", "coffee", "astronaut", "chelsea", "rocket",
               "immunohistochemistry", "hubble_deep_field", "moon")
MIN_PIXELS = 2048  # the few-shot support rule (PFENet): a class counts with >= 2048 px
_MANAGED = ("images", "masks", "train.txt", "val.txt", "classes.txt", "folds.txt", "README.md",
            "DONE")


# ----------------------------------------------------------------------------------------
# drawing: pure functions of a numpy Generator
# ----------------------------------------------------------------------------------------

def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One HSV colour (all in 0..1) as an RGB float triple in 0..255."""
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb) * 255.0


def _class_colours(k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Main and second colour of class index ``k`` (0-based), lightly jittered."""
    h = (_HUES[k] + rng.uniform(-0.015, 0.015)) % 1.0
    c1 = _hsv_to_rgb(h, rng.uniform(0.7, 0.95), rng.uniform(0.75, 0.95))
    c2 = _hsv_to_rgb((h + 0.5) % 1.0, rng.uniform(0.2, 0.45), rng.uniform(0.2, 0.35))
    return c1, c2


def _shape_mask(shape: str, r: float, theta: float, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of ``shape`` with circumradius ``r`` rotated by ``theta`` at the origin of
    the pixel-centre coordinates ``u`` (x) and ``v`` (y)."""
    c, s = np.cos(theta), np.sin(theta)
    x, y = c * u + s * v, -s * u + c * v  # object frame
    if shape == "disc":
        return x * x + y * y <= r * r
    if shape == "ring":
        d2 = x * x + y * y
        return (d2 <= r * r) & (d2 >= (0.5 * r) ** 2)
    if shape == "square":
        a = 0.75 * r
        return (np.abs(x) <= a) & (np.abs(y) <= a)
    if shape == "triangle":  # equilateral: inside the three edges at distance r / 2
        inside = np.ones(x.shape, bool)
        for phi in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
            inside &= x * np.cos(phi) + y * np.sin(phi) <= 0.5 * r
        return inside
    if shape == "star":  # five-pointed, inner radius 0.45 r: union of 5 kites around a core
        rho = np.hypot(x, y)
        ang = np.mod(np.arctan2(y, x) + np.pi / 2, 2 * np.pi / 5) - np.pi / 5  # -36..36 deg
        ri, half = 0.45 * r, np.pi / 5
        # boundary between tip (angle 0, radius r) and notch (angle +-36 deg, radius ri)
        px, py = rho * np.cos(ang), rho * np.abs(np.sin(ang))
        nx, ny = ri * np.cos(half), ri * np.sin(half)
        # inside when (px, py) lies on the origin's side of the segment tip -> notch
        cross = (nx - r) * (py - 0.0) - (ny - 0.0) * (px - r)
        return cross >= 0
    raise ValueError(f"unknown shape {shape!r}")


_AREA_FACTOR = {"disc": np.pi, "ring": 0.75 * np.pi, "square": 4 * 0.75 ** 2,
                "triangle": 3 * np.sqrt(3) / 4, "star": 5 * 0.45 * np.sin(np.pi / 5)}


def _appearance(app: str, k: int, u: np.ndarray, v: np.ndarray, r: float,
                rng: np.random.Generator) -> np.ndarray:
    """``h x w x 3`` float texture of class ``k`` in the object's bounding box."""
    c1, c2 = _class_colours(k, rng)
    phi = rng.uniform(0, np.pi)
    x, y = np.cos(phi) * u + np.sin(phi) * v, -np.sin(phi) * u + np.cos(phi) * v
    period = rng.uniform(9.0, 14.0)
    if app == "solid":
        sel = np.zeros(u.shape, bool)
    elif app == "stripes":
        sel = np.mod(x / period, 1.0) < 0.45
    elif app == "checker":
        sel = (np.floor(x / period) + np.floor(y / period)) % 2 == 1
    elif app == "dots":
        dx, dy = np.mod(x, period) - period / 2, np.mod(y, period) - period / 2
        sel = dx * dx + dy * dy <= (0.3 * period) ** 2
    else:
        raise ValueError(f"unknown appearance {app!r}")
    tex = np.where(sel[:, :, None], c2, c1)
    light = rng.uniform(0, 2 * np.pi)  # directional shading, brighter on one side
    shade = 1.0 + 0.22 * (np.cos(light) * u + np.sin(light) * v) / max(r, 1.0)
    return tex * shade[:, :, None]


@functools.lru_cache(maxsize=1)
def _backgrounds() -> dict[str, np.ndarray]:
    """The sample photos, decoded once per process (read-only arrays)."""
    from skimage import data

    out = {}
    for name in BACKGROUNDS:
        arr = np.ascontiguousarray(getattr(data, name)())
        arr.setflags(write=False)
        out[name] = arr
    return out


def _background(h: int, w: int, sources: dict[str, np.ndarray],
                rng: np.random.Generator) -> np.ndarray:
    """A random crop of a sample photo resized to ``h x w`` (float RGB 0..255)."""
    from PIL import Image

    name = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    src = sources[name]
    sh, sw = src.shape[:2]
    scale = rng.uniform(0.45, 1.0)
    ch = int(min(sh, sw * h / w) * scale)
    cw = int(ch * w / h)
    y0, x0 = rng.integers(0, sh - ch + 1), rng.integers(0, sw - cw + 1)
    crop = np.ascontiguousarray(src[y0:y0 + ch, x0:x0 + cw])
    img = np.asarray(Image.fromarray(crop).resize((w, h), Image.Resampling.BILINEAR),
                     dtype=np.float64)
    if img.ndim == 2:  # grayscale texture: tint it
        tint = _hsv_to_rgb(rng.uniform(), rng.uniform(0.1, 0.45), 1.0) / 255.0
        img = img[:, :, None] * tint
    if rng.random() < 0.5:
        img = img[:, ::-1]
    return img * rng.uniform(0.75, 1.1)


def render_image(classes: list[int], rng: np.random.Generator,
                 sources: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image with one object per entry of ``classes`` (0-based class indices).

    Returns
    -------
    image : (H, W, 3) uint8
    mask : (H, W) uint8, 0 background, class index + 1 where the object is visible.
    """
    h, w = int(rng.integers(200, 281)), int(rng.integers(280, 361))
    img = _background(h, w, sources, rng)
    inst = np.zeros((h, w), np.int16)  # instance map: 0 = background, i + 1 = object i
    for i, k in enumerate(classes):
        shape, app = CLASSES[k]
        area = rng.uniform(3000, 7500) * (h * w) / (240 * 320)
        r = min(np.sqrt(area / _AREA_FACTOR[shape]), min(h, w) / 2 - 3)
        theta = rng.uniform(0, 2 * np.pi)
        best = None
        for _ in range(25):  # least-overlapping of a few placements; stop at < 25 % covered
            cy, cx = rng.uniform(r + 1, h - r - 1), rng.uniform(r + 1, w - r - 1)
            y0, y1 = int(cy - r - 1), int(cy + r + 2)
            x0, x1 = int(cx - r - 1), int(cx + r + 2)
            v, u = np.mgrid[y0:y1, x0:x1].astype(np.float64)
            u, v = u + 0.5 - cx, v + 0.5 - cy
            m = _shape_mask(shape, r, theta, u, v)
            cover = np.count_nonzero(inst[y0:y1, x0:x1][m]) / max(m.sum(), 1)
            if best is None or cover < best[0]:
                best = (cover, y0, y1, x0, x1, u, v, m)
            if cover < 0.25:
                break
        _, y0, y1, x0, x1, u, v, m = best
        tex = _appearance(app, k, u, v, r, rng)
        img[y0:y1, x0:x1][m] = tex[m]
        inst[y0:y1, x0:x1][m] = i + 1
    img += rng.normal(0.0, 2.5, img.shape)  # sensor noise over everything
    lut = np.array([0] + [k + 1 for k in classes], np.uint8)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), lut[inst]


class _Deck:
    """Deals class indices so that every class comes up about equally often."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.cards = rng, []

    def draw(self, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            if not self.cards:
                self.cards = list(self.rng.permutation(len(CLASSES)))
            pick = next((c for c in self.cards if c not in out), None)
            if pick is None:  # only duplicates left: start a fresh round
                self.cards = []
                continue
            self.cards.remove(pick)
            out.append(int(pick))
        return out


def _image_classes(deck: _Deck, rng: np.random.Generator) -> list[int]:
    n = int(rng.choice([2, 3, 4], p=[0.35, 0.4, 0.25]))
    distinct = deck.draw(2 if n == 2 else int(rng.integers(2, n)))
    extra = [distinct[int(rng.integers(len(distinct)))] for _ in range(n - len(distinct))]
    order = distinct + extra
    return [order[i] for i in rng.permutation(len(order))]


# ----------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------



def generate_demo(out_dir, *, n_train: int = 240, n_val: int = 80, seed: int = 0,
                  overwrite: bool = False) -> Path:
    """Write the demo dataset into ``out_dir`` (folder layout); same arguments, same bytes.

    Parameters
    ----------
    out_dir : path
        Target folder; created. Must be empty unless ``overwrite``.
    n_train, n_val : int
        Images per split (defaults 240 / 80; each class is then in >= 15 train and >= 5 val
        images with >= 2048 visible pixels).
    seed : int
        Seed of all randomness.
    overwrite : bool
        Replace the demo files already in ``out_dir`` (other files are left alone).

    Returns
    -------
    Path of ``out_dir``; ``out_dir/DONE`` is written last.

    Example
    -------
    >>> root = generate_demo(tmp_path / "demo", n_train=20, n_val=10)  # doctest: +SKIP
    """
    from PIL import Image

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass overwrite=True (qgnet-prep demo "
                                  f"--overwrite) to regenerate the demo dataset there")
        for name in ("DONE",) + _MANAGED:  # the marker goes first
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    t0 = time.perf_counter()
    sources = _backgrounds()
    palette = voc_palette()
    counts = {s: np.zeros(len(CLASSES), int) for s in ("train", "val")}
    sizes = []
    lists: dict[str, list[str]] = {}
    for code, (split, n) in enumerate((("train", n_train), ("val", n_val))):
        deck = _Deck(np.random.default_rng([seed, code, 1_000_003]))
        lists[split] = []
        for i in range(n):
            rng = np.random.default_rng([seed, code, i])
            image, mask = render_image(_image_classes(deck, rng), rng, sources)
            name = f"{split}_{i:04d}"
            Image.fromarray(image).save(out / "images" / f"{name}.png", optimize=False)
            m = Image.fromarray(mask)  # mode L; putpalette makes it P with the same indices
            m.putpalette(palette)
            m.save(out / "masks" / f"{name}.png", optimize=False)
            px = np.bincount(mask.ravel(), minlength=len(CLASSES) + 1)[1:]
            counts[split] += px >= MIN_PIXELS
            sizes.append(mask.shape)
            lists[split].append(name)
    for split, names in lists.items():
        (out / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    (out / "classes.txt").write_text("".join(f"{n}\n" for n in CLASS_NAMES))
    # The folds the class ids were ordered for (ids 5i+1..5i+5: every shape once, mixed
    # appearances). Without this file the episodes stage would use the interleaved split,
    # which puts one appearance in each fold (all "solid" classes in fold 0): a novel look
    # rather than a novel class.
    (out / "folds.txt").write_text("".join(
        " ".join(str(5 * f + j + 1) for j in range(5)) + "\n" for f in range(4)))
    stats = {"version": DEMO_VERSION, "seed": seed, "n_train": n_train, "n_val": n_val,
             "images_with_class_ge_2048px": {s: c.tolist() for s, c in counts.items()}}
    (out / "README.md").write_text(_readme(stats, sizes))
    (out / "DONE").write_text(json.dumps(stats, sort_keys=True) + "\n")
    log.info("demo dataset: %d + %d images in %s (%.1f s)", n_train, n_val, out,
             time.perf_counter() - t0)
    return out


def _readme(stats: dict, sizes: list[tuple[int, int]]) -> str:
    hs, ws = [s[0] for s in sizes], [s[1] for s in sizes]
    rows = "\n".join(
        f"| {k + 1} | {CLASS_NAMES[k]} | {stats['images_with_class_ge_2048px']['train'][k]} | "
        f"{stats['images_with_class_ge_2048px']['val'][k]} |" for k in range(len(CLASSES)))
    return f"""# qgnet demo dataset (generated, version {stats['version']})

Generated by `qgnet-prep demo` (`pipeline.datasets.demo.generate_demo`, seed {stats['seed']}):
{stats['n_train']} train and {stats['n_val']} val images of textured shapes over crops of
scikit-image sample photos. Regenerate instead of copying; the same seed gives the same bytes.

Layout (folder layout, docs/data.md): `images/NAME.png` (RGB), `masks/NAME.png` (palette PNG:
index 0 background, 1..20 class ids; no ignore pixels), `classes.txt` (ids 1..20),
`train.txt`, `val.txt`, `folds.txt` (fold i tests ids 5i+1..5i+5: every shape once), `DONE` (written last).

Image sizes: H {min(hs) if hs else 0}..{max(hs) if hs else 0}, W {min(ws) if ws else 0}..{max(ws) if ws else 0}.

| id | class | train images with >= 2048 px | val images with >= 2048 px |
|---:|-------|---:|---:|
{rows}
"""


def prepare_demo(cache_dir=None, *, n_train: int = 240, n_val: int = 80, seed: int = 0,
                 overwrite: bool = False) -> Path:
    """Return ``<cache>/demo/data``, generating it first when its ``DONE`` is absent.

    The data is written into a temporary sibling folder ``data.tmp<pid>`` and renamed into
    place, so a reader never sees half a dataset and two processes racing here both end with
    a complete one. The temporaries of killed runs (dead pids) are removed first.
    """
    from pipeline.cache import dataset_cache_dir
    from pipeline.fileio import remove_stale_temporaries

    target = dataset_cache_dir("demo", cache_dir=cache_dir) / "data"
    for stale in remove_stale_temporaries(target.parent, base="data"):
        log.warning("removed %s, left by a killed run", stale)
    if (target / "DONE").is_file() and not overwrite:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"data.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    log.info("generating the demo dataset into %s", target)
    generate_demo(tmp, n_train=n_train, n_val=n_val, seed=seed)
    if (target / "DONE").is_file() and not overwrite:  # another process finished first
        shutil.rmtree(tmp)
        return target
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


class DemoDataset(FolderDataset):
    """The generated demo data, read as a folder dataset (``open_dataset("demo")``).

    Without a root, :func:`~pipeline.datasets.open_dataset` uses ``<cache>/demo/data`` and
    generates it there first when needed.
    """

    name = "demo"

    @classmethod
    def default_root(cls, *, cache_dir=None) -> Path:
        return prepare_demo(cache_dir)
