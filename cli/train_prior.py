"""``qgnet-train prior``: pretrain the prior extractor (MoCo v2, global + superpixel-local).

Thin: parse, resolve the config (defaults < TOML ``[prior]`` < ``QGNET_*`` < command line;
with ``--resume`` the checkpoint's config replaces the defaults, file and environment, and
the command line may change only the resumable options: :func:`model.checkpoint.resume_config`,
the same rule as ``qgnet-train fss``), call
:func:`model.prior.trainer.train_prior`. Torch is imported only when the command runs.

DDP: ``torchrun --nproc-per-node 2 -m cli.train prior ...`` (every rank parses the same
command line; ``--batch-size`` is the global batch).
"""
from __future__ import annotations

import click

BACKBONES = ["resnet18", "resnet50", "resnet101", "vgg16", "efficientnet_lite0"]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dataset", help="Dataset name (coco, coco-json, pascal, fss1000, folder, demo, "
                                "or your own).")
@click.option("--root", type=click.Path(file_okay=False), help="Dataset root (default: the reader's).")
@click.option("--split", help="Split to pretrain on: train (default), val, or all (train + val, "
                              "no labels read: the paper's \"entire dataset\").")
@click.option("--patches", type=click.Choice(["slic", "felzenszwalb"]),
              help="Superpixel method of the patch maps (default slic).")
@click.option("--patch-store", type=click.Path(file_okay=False),
              help="Explicit superpixel store (default: located in the cache).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Cache root.")
@click.option("--year", type=int, help="COCO only: 2014 or 2017 (default: the release under "
                                       "--root; 2014 when both are).")
@click.option("--limit", type=int, help="Only the first N images of the split.")
@click.option("--backbone", help="Backbone: " + ", ".join(BACKBONES) + " (default: resnet50 for "
                                 "pascal/coco, the paper's; efficientnet_lite0 for folder/demo).")
@click.option("--init", help="Backbone init: imagenet (efficientnet_lite0 only), none, or PATH "
                             "to a state dict (default: imagenet for efficientnet_lite0, else "
                             "none = random, the paper's recipe).")
@click.option("--epochs", type=int, help="Epochs (default: pascal 1000, coco 200 as the paper; "
                                         "folder/demo 200); the cosine schedule spans them.")
@click.option("--batch-size", type=int, help="Global batch size (default 256; demo 64).")
@click.option("--lr", type=float, help="Base learning rate (default 0.03 x batch / 256).")
@click.option("--schedule", type=click.Choice(["cosine", "cosine-epoch", "constant"]),
              help="cosine per step (default), cosine-epoch (MoCo), or constant.")
@click.option("--weight-decay", type=float, help="SGD weight decay (default 1e-4).")
@click.option("--queue-size", type=int, help="Global negative queue K (default 65536).")
@click.option("--local-queue-size", type=int, help="Patch negative queue (default 65536).")
@click.option("--local-patches", type=click.Choice(["pooled", "crop"]),
              help="The local loss's patches: pooled (default; DetCon style, mask-pooled from the "
                   "view's feature map) or crop (the paper as written: each patch's bounding box "
                   "cropped from both views, resized, encoded as separate inputs).")
@click.option("--patches-per-image", type=int,
              help="Patch slots per image (default 16 pooled, 1 crop).")
@click.option("--patch-size", type=int,
              help="--local-patches crop: side of the resized patch crops (default half --crop).")
@click.option("--min-patch-pixels", type=int,
              help="Pixels a superpixel needs in each view to be sampled (default an eighth of a "
                   "feature cell, 128 at 224 / stride 32; demo 96).")
@click.option("--max-patch-pixels", type=int,
              help="Most pixels a superpixel may cover in either view to be sampled (default a "
                   "sixteenth of the view, 3136 at 224; demo: the whole view).")
@click.option("--patch-fill", type=click.Choice(["repeat", "none"]),
              help="Slots an image cannot fill with distinct patches: repeat (default; copies of "
                   "its patches, as DetCon's draw with replacement) or none (left empty; demo).")
@click.option("--loss", type=click.Choice(["global", "local", "both"]), help="Loss (default both).")
@click.option("--temperature", type=float, help="InfoNCE temperature (default 0.2).")
@click.option("--momentum", type=float, help="Key encoder momentum (default 0.999).")
@click.option("--dim", type=int, help="Embedding dimension (default 128).")
@click.option("--mlp-hidden", type=int, help="Projection head hidden width (default: backbone channels).")
@click.option("--shuffle", type=click.Choice(["auto", "split-bn", "ddp", "none"]),
              help="Shuffle-BN variant (default auto: ddp under torchrun, else split-bn).")
@click.option("--split-bn-groups", type=int, help="SplitBatchNorm groups (default 8).")
@click.option("--crop", type=int, help="Crop size of both views (default 224; demo 128).")
@click.option("--scale-min", type=float, help="RandomResizedCrop minimum area (default 0.2).")
@click.option("--workers", type=int, help="DataLoader workers (default: the cores present, less 2; docs/gpu.md).")
@click.option("--augment-on", type=click.Choice(["device", "cpu"]),
              help="Where the colour jitter, grayscale, blur, flip and normalisation run: "
                   "device (default; workers ship uint8 crops) or cpu (all in the workers).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Device (default auto).")
@click.option("--amp/--no-amp", default=None, help="bf16 autocast on CUDA (default on).")
@click.option("--ckpt-every", type=int, help="Checkpoint every N steps (default 1000; and each epoch end).")
@click.option("--keep-checkpoints", type=int, help="Newest step checkpoints kept (default 2; 0 all).")
@click.option("--log-every", type=int, help="Steps per metrics.jsonl line (default 10).")
@click.option("--progress/--no-progress", default=None, help="tqdm progress bar (default on).")
@click.option("--out", type=click.Path(file_okay=False),
              help="Run dir (default runs/prior/<dataset>-<split>-<backbone>-<loss>).")
@click.option("--resume", is_flag=False, flag_value="auto", default=None,
              help="Continue exactly: the latest checkpoint of --out (bare --resume), or a "
                   "run dir or checkpoint PATH.")
@click.option("--export-only", is_flag=True, default=None,
              help="With --resume: write prior_extractor.pt from the checkpoint and stop.")
@click.option("--seed", type=int, help="Seed (default 0).")
@click.option("--max-steps", type=int, help="Stop after this global step (the schedule still "
                                            "spans --epochs).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="TOML config file (top level or table [prior]).")
def prior(config_file, **given):
    """Pretrain the prior extractor with MoCo v2 on whole images and superpixel patches.

    Needs the patch maps of the split: qgnet-prep superpixels --dataset D --split S --method M.
    Writes config.json, metrics.jsonl, train.log, checkpoints/ and prior_extractor.pt into
    the run dir.
    """
    from model.checkpoint import load_checkpoint, resume_config
    from model.prior.config import RESUMABLE, PriorConfig, upgrade_saved_config
    from model.prior.trainer import find_checkpoint, train_prior
    from pipeline.errors import QgnetError
    from pipeline.settings import resolve_config

    cli = {k: v for k, v in given.items() if v is not None}
    try:
        if cli.get("resume"):
            # the checkpoint's config is the base; the command line overrides it
            where = cli["resume"]
            if where == "auto":
                if not cli.get("out"):
                    raise click.UsageError("bare --resume needs --out RUN_DIR (or --resume PATH)")
                where = cli["out"]
            saved = upgrade_saved_config(load_checkpoint(find_checkpoint(where), kind="prior")["config"])
            cfg = resume_config(PriorConfig, saved, cli, resumable=RESUMABLE,
                                reset={"resume": "", "export_only": False, "max_steps": 0})
        else:
            cfg = resolve_config(PriorConfig, cli=cli, config_file=config_file, section="prior")
        run_dir = train_prior(cfg)
    except (QgnetError, ValueError, FileNotFoundError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"run dir: {run_dir}")
