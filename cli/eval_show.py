"""``qgnet-eval show``: PNG panels like QGNet's Fig. 5, one per chosen episode.

Left to right: query, support(s) with the mask overlaid, guided region map (PFENet prior),
prior region map (QGNet, query only), prediction, ground truth. Everything is shown at the
original image resolution (maps and logits mapped back by the scoring's own inverse of the
test-time resize, :func:`model.fss.metrics.map_to_original`). PIL only.
"""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from cli._errors import friendly_errors
from cli.eval_fss import common_options, parse_ints, set_threads

TILE = 200  # panel height in pixels
FG = np.array([255, 40, 40], np.float32)


def overlay(image: np.ndarray, mask: np.ndarray, *, alpha: float = 0.5) -> np.ndarray:
    """Image (H x W x 3 uint8) with mask == 1 tinted red and 255 darkened."""
    out = image.astype(np.float32).copy()
    fg = mask == 1
    out[fg] = (1 - alpha) * out[fg] + alpha * FG
    out[mask == 255] *= 0.4
    return out.clip(0, 255).astype(np.uint8)


def heat(m: np.ndarray) -> np.ndarray:
    """A jet-like colour map of values in [0, 1] -> H x W x 3 uint8."""
    m = np.clip(np.asarray(m, np.float32), 0, 1)
    rgb = np.stack([np.clip(1.5 - np.abs(4 * m - c), 0, 1) for c in (3, 2, 1)], axis=-1)
    return (rgb * 255).astype(np.uint8)


def _tile(arr: np.ndarray, title: str):
    from PIL import Image, ImageDraw

    h, w = arr.shape[:2]
    im = Image.fromarray(arr).resize((max(int(w * TILE / h), 1), TILE), Image.BILINEAR)
    canvas = Image.new("RGB", (im.width, TILE + 18), (255, 255, 255))
    canvas.paste(im, (0, 18))
    ImageDraw.Draw(canvas).text((4, 3), title, fill=(0, 0, 0))
    return canvas


def panel(tiles):
    from PIL import Image

    width = sum(t.width for t in tiles) + 4 * (len(tiles) - 1)
    out = Image.new("RGB", (width, tiles[0].height), (255, 255, 255))
    x = 0
    for t in tiles:
        out.paste(t, (x, 0))
        x += t.width + 4
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@common_options
@click.option("--episodes", "which", default="0,1,2", show_default=True,
              help="Episode numbers of the episode file, comma-separated.")
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="Episode seed (default 321; hsnet 0).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the PNGs.")
@friendly_errors
def show(checkpoint, shot, protocol, cache_dir, root, device, amp, workers, threads, which, seed, out):
    """Write one PNG panel per chosen episode into --out."""
    set_threads(threads)
    import torch

    from model.fss.build import load_model, step
    from model.fss.data import TestEpisodes, collate
    from model.fss.evaluate import checkpoint_amp
    from model.fss.metrics import map_to_original, upsample_logits
    from model.utils import pick_device
    from pipeline.episode_stage import load_test_episodes
    from pipeline.settings import merge_unset

    seed = seed if seed is not None else (0 if protocol == "hsnet" else 321)
    dev = pick_device(device)
    model, ckpt = load_model(checkpoint, device=dev)
    cfg = ckpt["config"]  # what is left unset comes from the training config
    amp = checkpoint_amp(ckpt) if amp is None else amp  # its training precision by default
    run = merge_unset({"shot": shot, "cache_dir": cache_dir, "root": root}, cfg)
    eps = load_test_episodes(cfg["dataset"], int(cfg["fold"]), int(run["shot"]), seed=seed,
                             protocol=protocol, cache_dir=run["cache_dir"] or None)
    ds = TestEpisodes(eps, crop=int(cfg["crop"]), dataset=cfg["dataset"],
                      root=run["root"] or None, cache_dir=run["cache_dir"] or None)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = {i + 1: n for i, n in enumerate(ds.store.attrs.get("class_names", []))}
    for e in parse_ints(which):
        if not 0 <= e < len(ds):
            raise click.ClickException(f"episode {e} does not exist: the file holds 0..{len(ds) - 1}")
        batch = collate([ds[e]])
        with torch.no_grad():
            r = step(model, batch, device=dev, amp=amp)
        o = r["out"]
        c = int(batch["cls"][0])
        image, label = ds.load(int(ds.query[e]), c)
        h, w = label.shape
        crop = int(batch["query"].shape[-1])
        pred = upsample_logits(o["logits"][:1], (h, w), crop=crop).cpu().numpy()
        tiles = [_tile(image, f"query #{e}: {names.get(c, c)}")]
        for k, s in enumerate(ds.support[e]):
            si, sm = ds.load(int(s), c)
            tiles.append(_tile(overlay(si, sm), f"support {k + 1}"))
        g = map_to_original(o["guided_map"][:1], (h, w), crop=crop)[0, 0].cpu().numpy()
        tiles.append(_tile(heat(g), "guided region map"))
        if o.get("prior_map") is not None:
            p = map_to_original(o["prior_map"][:1], (h, w), crop=crop)[0, 0].cpu().numpy()
            tiles.append(_tile(heat(p), "prior region map"))
        tiles.append(_tile(overlay(image, pred.astype(np.uint8)), "prediction"))
        tiles.append(_tile(overlay(image, label), "ground truth"))
        path = out_dir / f"episode-{e:05d}.png"
        panel(tiles).save(path)
        click.echo(str(path))
