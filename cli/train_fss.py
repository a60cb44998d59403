"""``qgnet-train fss``: train QGNet (or the ``--no-prior-map`` PFENet baseline) on one fold.

Thin: parse, resolve the config (defaults < TOML ``[fss]`` < ``QGNET_*`` < command line;
with ``--resume`` the checkpoint's config is the base and the command line may change only
the resumable options: :func:`model.checkpoint.resume_config`, the same rule as
``qgnet-train prior``), call :func:`model.fss.trainer.train_fss`.

DDP: ``torchrun --nproc-per-node 2 -m cli.train fss ...`` (``--batch-size`` is global).
"""
from __future__ import annotations

import click

BACKBONES = ["resnet50", "resnet101", "vgg16", "efficientnet_lite0", "resnet18"]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dataset", help="Dataset name (pascal, coco, folder, demo).")
@click.option("--root", type=click.Path(file_okay=False), help="Dataset root (default: the mask store's).")
@click.option("--fold", type=int, help="Fold (default 0).")
@click.option("--shot", type=int, help="Support images per episode (default 1).")
@click.option("--recipe", type=click.Choice(["paper", "pfenet"]),
              help="Dataset defaults: paper (default; COCO crop 473, ResNet-50) or pfenet (COCO "
                   "crop 641, ResNet-101, as PFENet's configs); PASCAL is the same in both.")
@click.option("--backbone", type=click.Choice(BACKBONES),
              help="Feature extractor (default: resnet50 pascal/coco, efficientnet_lite0 folder/demo; "
                   "--recipe pfenet: resnet101 coco).")
@click.option("--weights", help="Feature extractor weights: PATH, imagenet (efficientnet_lite0) or none.")
@click.option("--prior", help="Prior extractor: prior_extractor.pt of `qgnet-train prior`, or imagenet "
                              "(ImageNet EfficientNet-Lite0 as a stand-in Fp).")
@click.option("--prior-map/--no-prior-map", "use_prior_map", default=None,
              help="QGNet's prior region map (default on); --no-prior-map = PFENet baseline.")
@click.option("--bins", help="FEM bins: auto (60,30,15,8 at crop 473, else fractions) or a list.")
@click.option("--epochs", type=int, help="Epochs (pascal 200, coco 50, folder 50, demo 20).")
@click.option("--batch-size", type=int, help="Global batch (pascal 4, coco 8, folder/demo 4).")
@click.option("--lr", type=float, help="Base lr (pascal 0.0025, coco 0.005, folder/demo 0.0025).")
@click.option("--lr-scale", type=float, help="Multiplier of every group's lr (default 10, PFENet's "
                                             "scale_lr: effective lr = lr x 10).")
@click.option("--crop", type=int, help="Crop side (pascal 473, coco 473, folder/demo 161; "
                                       "--recipe pfenet: coco 641).")
@click.option("--scale-min", type=float, help="RandScale minimum (pascal 0.9, coco 0.8).")
@click.option("--scale-max", type=float, help="RandScale maximum (pascal 1.1, coco 1.25).")
@click.option("--workers", type=int, help="DataLoader workers (default 2).")
@click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads (default: torch's; 1 on a shared CPU).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Device (default auto).")
@click.option("--amp/--no-amp", default=None, help="bf16 autocast on CUDA (default on).")
@click.option("--val-episodes", type=int, help="Validation episodes (default 1000; 0 = none).")
@click.option("--val-every", type=int, help="Validate every N steps (default 0: each epoch end).")
@click.option("--val-seed", type=int, help="Seed of the validation episode file that picks best.pt (default 123, "
                                          "not the test seed; 321 reproduces PFENet).")
@click.option("--max-steps", type=int, help="Stop after this step (the schedule still spans --epochs).")
@click.option("--ckpt-every", type=int, help="Also write last.pt every N steps.")
@click.option("--log-every", type=int, help="Steps per metrics.jsonl line (default 10).")
@click.option("--progress/--no-progress", default=None, help="tqdm progress bars (default on).")
@click.option("--resume", help="Continue exactly from a run dir (its last.pt) or a checkpoint.")
@click.option("--seed", type=int, help="Seed (default 321).")
@click.option("--out", type=click.Path(file_okay=False),
              help="Run dir (default runs/fss/<dataset>-fold<F>-<K>shot-<backbone>-<qgnet|baseline>).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Cache root.")
@click.option("--train-set", type=click.Choice(["train", "aug"]),
              help="PASCAL training list: train (PFENet's 5,953, default) or aug (10,582).")
@click.option("--drop-novel-images/--keep-novel-images", default=None,
              help="BAM: drop training images holding test classes (default keep, PFENet).")
@click.option("--novel-pixels", type=click.Choice(["background", "ignore"]),
              help="Test-class pixels in kept training images: background (PFENet, default) "
                   "or ignore (255, no loss; for scene datasets where test classes are in "
                   "nearly every training image).")
@click.option("--frozen-bn", type=click.Choice(["eval", "reference"]),
              help="BatchNorm of the two frozen backbones while training: eval (default; running "
                   "statistics, never updated, as HSNet and BAM) or reference (PFENet's and the QGNet "
                   "authors' train.py: batch statistics, running statistics drift and are saved in "
                   "the checkpoint). Evaluation uses running statistics either way.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="TOML config file (top level or table [fss]).")
def fss(config_file, **given):
    """Train the few-shot network on one fold with PFENet's recipe.

    Needs the mask stores and episode files of the dataset:
    qgnet-prep masks --dataset D --split train|val, then qgnet-prep episodes --dataset D.
    Writes config.json, metrics.jsonl, train.log, last.pt and best.pt into the run dir.
    """
    import shlex

    from model.checkpoint import load_checkpoint, resume_config
    from model.fss.trainer import RESUMABLE, FssConfig, find_checkpoint, train_fss
    from pipeline.errors import QgnetError
    from pipeline.settings import resolve_config

    cli = {k: v for k, v in given.items() if v is not None}
    try:
        if cli.get("resume"):
            saved = load_checkpoint(find_checkpoint(cli["resume"]), kind="fss")["config"]
            cfg = resume_config(FssConfig, saved, cli, resumable=RESUMABLE,
                                reset={"max_steps": 0})
        else:
            cfg = resolve_config(FssConfig, cli=cli, config_file=config_file, section="fss")
        run_dir = train_fss(cfg)
    except (QgnetError, ValueError, FileNotFoundError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"run dir: {run_dir}")
    click.echo(f"evaluate with: qgnet-eval fss --checkpoint {shlex.quote(str(run_dir / 'best.pt'))}")
