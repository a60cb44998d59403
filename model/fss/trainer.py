"""``qgnet-train fss``: train QGNet (or the PFENet-equivalent baseline) on one fold.

PFENet's recipe (``train.py``; docs/fss.md lists every choice)::

    data        training list of the fold (qgnet-prep episodes), one episode per listed image
                per epoch, PFENet augmentation, drop_last
    optimiser   SGD on the new layers only (backbones frozen), momentum 0.9, wd 1e-4
    lr          poly: lr_i = base_lr * lr_scale * (1 - i / max_iter) ** 0.9, i = 1, 2, ...
                set before every iteration. lr_scale defaults to 10: PFENet's
                ``poly_learning_rate(..., index_split=-1, scale_lr=10)`` scales every group
                by 10, so its PASCAL base lr 0.0025 trains at 0.025 (its issue #17 reply
                says otherwise; the code is what produced the published numbers)
    loss        CE(main) + 1.0 x mean CE(aux), 255 ignored
    validation  fixed val-split episodes of seed 123 (``val_seed``; not the test seed 321
                that ``qgnet-eval fss`` scores, so the reported number is not a maximum over
                checkpoints of the test score; ``--val-seed 321`` reproduces PFENet's
                choice) at the end of each epoch or every ``val_every`` steps, through the
                evaluator's own path (model.fss.evaluate.run_episodes); best.pt by mIoU,
                last.pt always

Run dir: ``config.json``, ``metrics.jsonl`` (one object per logged step / validation),
``train.log``, ``last.pt``, ``best.pt``. Checkpoints hold the trainable weights, the
optimiser, step, epoch, RNG states, the config, the best mIoU and ``model_meta``
(backbone, weights, prior) so ``qgnet-eval fss --checkpoint`` needs nothing else.

Exact resume: items depend only on ``(seed, epoch, position)`` (see
:class:`model.fss.data.EpisodeSampler`), the global RNG (dropout) is restored from the
checkpoint and DataLoader worker seeds come from a per-epoch generator. Saving, loading,
the resume rule (:data:`RESUMABLE`), leftovers of killed runs and the metrics truncation on
resume are :mod:`model.checkpoint`'s (docs/checkpoints.md). Unreadable training images are
skipped (``skipped_images`` in metrics.jsonl).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model import checkpoint as ckpt_lib
from model.checkpoint import RESUMABLE_COMMON
from model.fss import build
from model.fss.data import EpisodeSampler, TrainEpisodes, collate

log = logging.getLogger("qgnet.fss")

# Per-dataset defaults (PFENet's PASCAL and COCO configs; folder/demo: a small CPU setup).
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "pascal": dict(backbone="resnet50", weights="", crop=473, scale_min=0.9, scale_max=1.1,
                   batch_size=4, lr=0.0025, epochs=200),
    # the QGNet paper's COCO setting (crop 473 "due to GPU memory constraints", ResNet-50 as
    # the authors' code); PFENet's 641 / ResNet-101 is --recipe pfenet (RECIPES below)
    "coco": dict(backbone="resnet50", weights="", crop=473, scale_min=0.8, scale_max=1.25,
                 batch_size=8, lr=0.005, epochs=50),
    "folder": dict(backbone="efficientnet_lite0", weights="imagenet", crop=161, scale_min=0.9,
                   scale_max=1.1, batch_size=4, lr=0.0025, epochs=50),
    "demo": dict(backbone="efficientnet_lite0", weights="imagenet", crop=161, scale_min=0.9,
                 scale_max=1.1, batch_size=4, lr=0.0025, epochs=20),
}

# --recipe: dataset defaults that differ from the paper's ("paper" changes nothing)
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {},
    "pfenet": {"coco": dict(backbone="resnet101", crop=641)},  # PFENet's config/coco/*.yaml
}


@dataclasses.dataclass(frozen=True)
class FssConfig:
    """Options of ``qgnet-train fss`` (empty / 0 = the dataset's default above)."""

    dataset: str = "demo"
    recipe: str = "paper"             # paper | pfenet (COCO: 641 + ResNet-101 as PFENet)
    root: str | None = None
    fold: int = 0
    shot: int = 1
    backbone: str = ""                # resnet50 | resnet101 | vgg16 | efficientnet_lite0
    weights: str = ""                 # PATH | imagenet (efficientnet_lite0) | none
    prior: str = ""                   # prior_extractor.pt | imagenet (stand-in, lite0)
    use_prior_map: bool = True        # False: PFENet-equivalent baseline
    bins: str = "auto"                # auto: (60,30,15,8) at 473, else fractions of the grid
    epochs: int = 0
    batch_size: int = 0               # global batch (split among DDP ranks)
    lr: float = 0.0                   # base lr (PFENet's base_lr)
    lr_scale: float = 10.0            # PFENet's scale_lr (effective lr = lr * lr_scale)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    power: float = 0.9
    crop: int = 0
    scale_min: float = 0.0
    scale_max: float = 0.0
    workers: int = 2
    threads: int = 0                  # torch CPU threads (0: torch's default; --threads >= 1)
    device: str = "auto"
    amp: bool = True                  # bf16 autocast on CUDA
    val_episodes: int = 1000          # 0: no validation
    val_every: int = 0                # steps; 0: at the end of every epoch
    val_seed: int = 123               # pipeline.episodes.VAL_SEED; 321 = PFENet (test seed)
    max_steps: int = 0                # stop early (the schedule still spans the epochs)
    ckpt_every: int = 0               # extra last.pt every N steps (0: epoch ends only)
    log_every: int = 10
    progress: bool = True
    resume: str = ""
    seed: int = 321
    out: str = ""
    cache_dir: str | None = None
    train_set: str = "train"          # pascal: train (5,953) | aug (10,582)
    drop_novel_images: bool = False   # BAM's filter_intersection
    novel_pixels: str = "background"  # test-class pixels in training images: background | ignore
    frozen_bn: str = "eval"           # BN of the frozen backbones: eval | reference (PFENet's
                                      # train.py: batch statistics, running stats drift)


# options that may differ between a run and its resumption (model.checkpoint's resume rule)
RESUMABLE = RESUMABLE_COMMON | {"threads"}

# option -> (smallest allowed value, what it is); checked after the dataset defaults
_MINIMA = {"shot": (1, "support images per episode"), "crop": (9, "crop side in pixels"),
           "batch_size": (1, "global batch"), "epochs": (1, "epochs"),
           "workers": (0, "DataLoader workers"), "threads": (0, "torch CPU threads"),
           "val_episodes": (0, "validation episodes"), "val_every": (0, "steps"),
           "max_steps": (0, "steps"), "ckpt_every": (0, "steps"), "log_every": (1, "steps"),
           "fold": (0, "fold")}


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def finalize_config(cfg: FssConfig, *, world: int = 1) -> FssConfig:
    """Fill the dataset defaults and check the options (ConfigError names the one that is
    wrong, its allowed range and what to pass)."""
    from pipeline.cache import validate_dataset_name
    from pipeline.errors import ConfigError

    validate_dataset_name(cfg.dataset)  # the one check every command runs (pipeline.cache)
    if cfg.recipe not in RECIPES:
        raise ConfigError(f"--recipe must be one of {', '.join(RECIPES)}; got {cfg.recipe!r}")
    from model.fss.qgnet import FROZEN_BN

    if cfg.frozen_bn not in FROZEN_BN:
        raise ConfigError(f"--frozen-bn must be one of {', '.join(FROZEN_BN)}; got {cfg.frozen_bn!r}")
    d = DATASET_DEFAULTS.get(cfg.dataset, DATASET_DEFAULTS["folder"])
    d = {**d, **RECIPES[cfg.recipe].get(cfg.dataset, {})}
    upd = {k: v for k, v in d.items() if not getattr(cfg, k)}
    cfg = dataclasses.replace(cfg, **upd)
    for name, (low, what) in _MINIMA.items():
        value = getattr(cfg, name)
        if value < low:
            default = d.get(name)
            raise ConfigError(f"{_option(name)} {value}: must be >= {low} ({what})"
                              + (f"; the {cfg.dataset} default is {default}"
                                 if default is not None else ""))
    if not cfg.weights:
        raise ConfigError(f"--backbone {cfg.backbone} needs --weights PATH (a state dict, e.g. "
                          f"PFENet's initmodel/{cfg.backbone}_v2.pth), or --weights none; only "
                          f"efficientnet_lite0 has offline weights (--weights imagenet)")
    if cfg.use_prior_map and not cfg.prior:
        raise ConfigError("QGNet needs the prior extractor: pass --prior PATH to the "
                          "prior_extractor.pt written by `qgnet-train prior`, or --no-prior-map "
                          "for the PFENet baseline (or --prior imagenet: ImageNet EfficientNet-"
                          "Lite0 as a stand-in Fp)")
    if cfg.use_prior_map and cfg.prior != "imagenet" and not Path(cfg.prior).is_file():
        raise FileNotFoundError(f"no prior extractor at {cfg.prior}; run `qgnet-train prior` "
                                f"(it writes prior_extractor.pt) or pass --no-prior-map")
    if not 0 < cfg.scale_min <= cfg.scale_max:
        raise ConfigError(f"--scale-min {cfg.scale_min} / --scale-max {cfg.scale_max}: need "
                          f"0 < min <= max")
    if cfg.batch_size % world:
        raise ConfigError(f"--batch-size {cfg.batch_size} is the global batch and must divide by "
                          f"the {world} processes")
    if not cfg.out:
        tag = "qgnet" if cfg.use_prior_map else "baseline"
        cfg = dataclasses.replace(cfg, out=str(Path("runs") / "fss" / (
            f"{cfg.dataset}-fold{cfg.fold}-{cfg.shot}shot-{cfg.backbone}-{tag}")))
    return cfg


def check_fold(dataset: str, fold: int, *, cache_dir: str | None) -> None:
    """Refuse a fold the dataset does not have (folds.json of ``qgnet-prep episodes`` says how
    many; PASCAL-5i / COCO-20i and the interleaved default have 4)."""
    import json

    from pipeline.cache import episodes_dir
    from pipeline.episodes import NUM_FOLDS
    from pipeline.errors import ConfigError

    folds_json = episodes_dir(dataset, cache_dir=cache_dir) / "folds.json"
    n = NUM_FOLDS
    if folds_json.is_file():
        n = len(json.loads(folds_json.read_text()).get("folds", [])) or NUM_FOLDS
    if not 0 <= fold < n:
        raise ConfigError(f"--fold {fold}: the dataset {dataset} has folds 0-{n - 1}"
                          + (f" ({folds_json})" if folds_json.is_file() else ""))


def poly_lr(cfg: FssConfig, it: int, max_iter: int) -> float:
    """PFENet's poly schedule at iteration ``it`` (1-based), times ``lr_scale``."""
    return cfg.lr * cfg.lr_scale * (1 - min(it, max_iter) / max_iter) ** cfg.power


def find_checkpoint(where: str | os.PathLike) -> Path:
    """A checkpoint file, or ``last.pt`` of a run dir (:func:`model.checkpoint.find_checkpoint`)."""
    return ckpt_lib.find_checkpoint(where, kind="fss")


def _setup_log(path: Path, *, enabled: bool) -> None:
    from model.utils import attach_file_log

    attach_file_log(log, path, enabled=enabled)


def _agree(dinfo, error: BaseException | None) -> None:
    """Raise ``error`` of rank 0 on every rank (a run-dir refusal decided by rank 0 alone
    left the other ranks waiting in the next collective until the NCCL timeout)."""
    if dinfo.enabled:
        box = [None if error is None else (type(error).__name__, str(error))]
        torch.distributed.broadcast_object_list(box, src=0)
        if box[0] is not None and error is None:
            kind, msg = box[0]
            error = FileExistsError(msg) if kind == "FileExistsError" else RuntimeError(msg)
    if error is not None:
        raise error


def train_fss(cfg: FssConfig) -> Path:
    """Train one fold; returns the run dir (see the module docstring)."""
    from model.checkpoint import (
        CheckpointSaver,
        WindowMeans,
        check_resume,
        load_checkpoint,
        pick_rank_state,
        rng_state,
        seed_everything,
        set_rng_state,
        truncate_metrics,
    )
    from model.speed import channels_last_on_cuda, configure_cuda
    from model.utils import MetricsWriter, init_distributed, pick_device
    from pipeline.episode_stage import derive_test_episodes, load_training_list
    from pipeline.fileio import remove_stale_temporaries, write_json_atomic
    from pipeline.provenance import provenance
    from pipeline.settings import config_dict

    dinfo = init_distributed(cfg.device)
    cfg = finalize_config(cfg, world=dinfo.world_size)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    configure_cuda(device)  # cudnn.benchmark + TF32 matmuls, CUDA only (model.speed)
    run_dir = Path(cfg.out)
    ckpt = None
    if cfg.resume:
        ckpt = load_checkpoint(find_checkpoint(cfg.resume), kind="fss")
        check_resume(ckpt["config"], config_dict(cfg), resumable=RESUMABLE)
    error = None
    if dinfo.main and ckpt is None and (run_dir / "last.pt").exists():
        error = FileExistsError(f"{run_dir} already holds a run; pass --resume {run_dir} to "
                                f"continue it or --out NEW_DIR")
    _agree(dinfo, error)  # every rank raises, none waits

    # data, checked before the run dir exists (a failed start leaves nothing behind); errors
    # name the qgnet-prep command that builds what is missing
    meta = build.model_meta(config_dict(cfg))  # reads the prior extractor: a bad file fails here
    check_fold(cfg.dataset, cfg.fold, cache_dir=cfg.cache_dir)
    train_list = load_training_list(cfg.dataset, cfg.fold, cache_dir=cfg.cache_dir,
                                    drop_novel_images=cfg.drop_novel_images,
                                    train_set=None if cfg.train_set == "train" else cfg.train_set)
    train_ds = TrainEpisodes(train_list, shot=cfg.shot, crop=cfg.crop,
                             scale=(cfg.scale_min, cfg.scale_max), dataset=cfg.dataset,
                             root=cfg.root, cache_dir=cfg.cache_dir,
                             novel_pixels=cfg.novel_pixels)
    val_eps = None
    if cfg.val_episodes > 0:
        val_eps = derive_test_episodes(cfg.dataset, cfg.fold, cfg.shot, seed=cfg.val_seed,
                                       cache_dir=cfg.cache_dir)
    world = dinfo.world_size
    per_rank = cfg.batch_size // world  # finalize_config checked that it divides
    spe = (len(train_ds) // world) // per_rank  # steps per epoch (drop_last)
    if spe < 1:
        raise ValueError(f"{len(train_ds)} training episodes are fewer than one batch of "
                         f"{per_rank} per rank; lower --batch-size")
    max_iter = cfg.epochs * spe
    stop = min(cfg.max_steps, max_iter) if cfg.max_steps else max_iter

    if dinfo.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir)  # last.pt.tmp<pid> of a killed save
        if ckpt is not None:  # the replayed steps must not appear twice in the curve
            truncate_metrics(run_dir / "metrics.jsonl", int(ckpt["step"]))
    _setup_log(run_dir / "train.log", enabled=dinfo.main)
    seed_everything(cfg.seed + dinfo.rank)

    # model and optimiser
    model = channels_last_on_cuda(build.build_model(meta).to(device), device)  # NHWC on CUDA
    params = model.trainable_parameters()
    optimizer = torch.optim.SGD(params, lr=cfg.lr * cfg.lr_scale, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    step_i, best, best_step, skipped_total = 0, -1.0, -1, 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"], strict=False)
        optimizer.load_state_dict(ckpt["optimizer"])
        step_i, best, best_step = int(ckpt["step"]), float(ckpt["best_miou"]), int(ckpt["best_step"])
        skipped_total = int(ckpt.get("skipped_images", 0))
        set_rng_state(pick_rank_state(ckpt["rng"], dinfo.rank), device)
    net = model
    if dinfo.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    writer = MetricsWriter(run_dir / "metrics.jsonl", enabled=dinfo.main)
    saver = CheckpointSaver(run_dir, kind="fss")
    if dinfo.main:
        write_json_atomic(run_dir / "config.json", {**config_dict(cfg), "model_meta": meta,
                                                    "steps_per_epoch": spe, "max_iter": max_iter,
                                                    **provenance(config_dict(cfg))})
    log.info("fss %s fold %d %d-shot: %d training images, %d steps/epoch, %d steps (stop at %d), "
             "lr %.4g x %.3g, %s, %d rank(s); resume from step %d", cfg.dataset, cfg.fold, cfg.shot,
             len(train_ds), spe, max_iter, stop, cfg.lr, cfg.lr_scale, meta, world, step_i)

    def validate() -> float:
        nonlocal best, best_step
        if val_eps is None:
            return float("nan")
        from model.fss import evaluate as ev

        loader = ev.test_loader(val_eps, dataset=cfg.dataset, crop=cfg.crop, root=cfg.root,
                                cache_dir=cfg.cache_dir, limit=cfg.val_episodes,
                                workers=min(cfg.workers, 2), rank=dinfo.rank, world=world,
                                batch_size=ev.default_batch(device), pin_memory=device.type == "cuda")
        r = ev.run_episodes(model, loader, classes=np.asarray(val_eps["test_classes"]).tolist(),
                            device=device, amp=cfg.amp, progress=cfg.progress and dinfo.main,
                            desc="val", reduce=True)
        val_loss = r["loss"]
        if dinfo.enabled:  # the mean over every rank's episodes, not rank 0's share
            n_local = r["episodes"]
            t = torch.tensor([val_loss * n_local if n_local else 0.0, float(n_local)],
                             dtype=torch.float64, device=device)
            torch.distributed.all_reduce(t)
            val_loss = float(t[0] / t[1]) if t[1] > 0 else float("nan")
        miou, fb = r["meter"].miou(), r["meter"].fb_iou()
        improved = miou > best
        if improved:
            best, best_step = miou, step_i
        writer.write(kind="val", step=step_i, epoch=step_i / spe, miou=miou, fb_iou=fb,
                     val_loss=val_loss, episodes=r["meter"].n_episodes,
                     val_file=Path(str(val_eps["path"])).name,
                     per_class=r["meter"].summary()["per_class"], best_miou=best)
        log.info("val step %d: mIoU %.4f FB-IoU %.4f loss %.4f (best %.4f at %d)", step_i, miou, fb,
                 val_loss, best, best_step)
        if improved:
            save("best")
        return miou

    def save(name: str) -> None:
        rng = [rng_state(device)]  # this rank's own CUDA device only
        pending = sum(r["skipped"] for r in window.rows)  # skips not logged yet
        if dinfo.enabled:
            gathered = [None] * world
            torch.distributed.all_gather_object(gathered, rng[0])
            rng = gathered
            t = torch.tensor([pending], dtype=torch.float64, device=device)
            torch.distributed.all_reduce(t)
            pending = float(t)
        if not dinfo.main:
            return
        saver.save_named({
            "model": build.trainable_state(model), "optimizer": optimizer.state_dict(),
            "step": step_i, "epoch": step_i // spe, "rng": rng, "config": config_dict(cfg),
            "model_meta": meta, "best_miou": best, "best_step": best_step,
            "skipped_images": skipped_total + int(round(pending)),
            # what qgnet-eval fss evaluates in unless told otherwise (bf16 autocast is CUDA only)
            "precision": "bf16" if cfg.amp and device.type == "cuda" else "fp32",
            "provenance": provenance(config_dict(cfg))}, name)

    def reduce_ranks(keys: list[str], vals: list[float]) -> list[float]:
        if not dinfo.enabled:
            return vals
        t = torch.tensor(vals, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        t = (t / world).cpu()
        t[keys.index("skipped")] *= world  # skipped images: summed over ranks
        return t.tolist()

    bar = None
    if cfg.progress and dinfo.main:
        from tqdm.auto import tqdm

        bar = tqdm(total=stop, initial=step_i, desc="fss", unit="step", dynamic_ncols=True)
    window = WindowMeans(sums=("skipped",))
    t_last = time.perf_counter()
    net.train()
    while step_i < stop:
        epoch = step_i // spe
        start = (step_i % spe) * per_rank
        sampler = EpisodeSampler(len(train_ds), seed=cfg.seed, epoch=epoch, start=start,
                                 rank=dinfo.rank, world=world)
        loader = torch.utils.data.DataLoader(
            train_ds, batch_size=per_rank, sampler=sampler, num_workers=cfg.workers,
            collate_fn=collate, drop_last=True, pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch),
            persistent_workers=False)
        for batch in loader:
            lr = poly_lr(cfg, step_i + 1, max_iter)
            for g in optimizer.param_groups:
                g["lr"] = lr
            skipped = sum(batch.pop("skipped").tolist())  # unreadable images passed over (host)
            r = build.step(net, batch, device=device, amp=cfg.amp, optimizer=optimizer)
            step_i += 1
            # device tensors, read on the host at log steps only (no per-step sync)
            window.add(loss=r["loss"], main=r["main"], aux=r["aux"], skipped=skipped)
            if bar is not None:
                bar.update(1)
            if step_i % cfg.log_every == 0 or step_i == stop:
                now = time.perf_counter()
                n_window = len(window)
                rec = window.pop(reduce=reduce_ranks)  # the one host read of the window
                if not math.isfinite(rec["loss"]):  # a non-finite step makes the mean non-finite
                    raise FloatingPointError(f"loss is {rec['loss']} in steps "
                                             f"{step_i - n_window + 1}-{step_i}; lower --lr")
                skipped_total += int(round(rec.pop("skipped")))
                if bar is not None:
                    bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{lr:.2e}")
                writer.write(kind="train", step=step_i, epoch=step_i / spe, lr=lr, **rec,
                             skipped_images=skipped_total,
                             steps_per_s=n_window / max(now - t_last, 1e-9))
                log.info("step %d/%d loss %.4f (main %.4f aux %.4f) lr %.3g", step_i, stop,
                         rec["loss"], rec["main"], rec["aux"], lr)
                t_last = now
            if cfg.val_every and step_i % cfg.val_every == 0:
                validate()
                net.train()
            if step_i % spe == 0 and not cfg.val_every:
                validate()
                net.train()
            if (cfg.ckpt_every and step_i % cfg.ckpt_every == 0) or step_i % spe == 0:
                save("last")
            if step_i >= stop:
                break
    if bar is not None:
        bar.close()
    if val_eps is not None and best_step < 0:
        validate()  # a run shorter than one validation period still gets a best.pt
    save("last")
    if val_eps is None:  # no validation: the last weights are the best we know
        save("best")
    log.info("done: %d steps, best mIoU %.4f at step %d, %d unreadable images skipped -> %s",
             step_i, best, best_step, skipped_total, run_dir)
    return run_dir
