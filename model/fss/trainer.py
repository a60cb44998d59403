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
the run dir, its lock and resume rule (:data:`model.fss.config.RESUMABLE`), leftovers of
killed runs, the metrics truncation on resume, DDP and logging are the run skeleton's
(:mod:`model.run`, docs/checkpoints.md); the options are :mod:`model.fss.config`'s.
Unreadable training images are skipped (``skipped_images`` in metrics.jsonl).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from model import checkpoint as ckpt_lib
from model.fss import build
from model.fss.config import RESUMABLE, FssConfig, check_fold, finalize_config
from model.fss.data import EpisodeSampler, TrainEpisodes, collate

log = logging.getLogger("qgnet.fss")


def poly_lr(cfg: FssConfig, it: int, max_iter: int) -> float:
    """PFENet's poly schedule at iteration ``it`` (1-based), times ``lr_scale``."""
    return cfg.lr * cfg.lr_scale * (1 - min(it, max_iter) / max_iter) ** cfg.power


def find_checkpoint(where: str | os.PathLike) -> Path:
    """A checkpoint file, or ``last.pt`` of a run dir (:func:`model.checkpoint.find_checkpoint`)."""
    return ckpt_lib.find_checkpoint(where, kind="fss")


def train_fss(cfg: FssConfig) -> Path:
    """Train one fold; returns the run dir (see the module docstring)."""
    from model.checkpoint import CheckpointSaver, WindowMeans, seed_everything
    from model.run import Run
    from model.speed import channels_last_on_cuda
    from pipeline.episode_stage import derive_test_episodes, load_training_list
    from pipeline.provenance import provenance
    from pipeline.settings import config_dict

    with Run("fss", device=cfg.device, log=log, progress=cfg.progress) as run:
        cfg = finalize_config(cfg, world=run.world)
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        device, world = run.device, run.world
        config = config_dict(cfg)  # what checkpoints and config.json record
        run_dir, ckpt = run.locate(config, cls=FssConfig, kind="fss", resumable=RESUMABLE)

        # data, checked before the run dir is touched (a failed start leaves nothing behind);
        # errors name the qgnet-prep command that builds what is missing
        meta = build.model_meta(config)  # reads the prior extractor: a bad file fails here
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
        per_rank = cfg.batch_size // world  # finalize_config checked that it divides
        spe = (len(train_ds) // world) // per_rank  # steps per epoch (drop_last)
        if spe < 1:
            from pipeline.errors import ConfigError

            raise ConfigError(f"{len(train_ds)} training episodes are fewer than one batch of "
                              f"{per_rank} per rank; lower --batch-size")
        max_iter = cfg.epochs * spe
        stop = min(cfg.max_steps, max_iter) if cfg.max_steps is not None else max_iter

        run.open(run_dir, config, resumed=ckpt, kind="fss")
        seed_everything(cfg.seed + run.rank)

        # model and optimiser
        model = channels_last_on_cuda(build.build_model(meta).to(device), device)  # NHWC on CUDA
        optimizer = torch.optim.SGD(model.trainable_parameters(), lr=cfg.lr * cfg.lr_scale,
                                    momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        saver = CheckpointSaver(run_dir, kind="fss", layout="last", every=cfg.ckpt_every,
                                best="best_miou")
        step_i, skipped_total = 0, 0
        if ckpt is not None:
            model.load_state_dict(ckpt["model"], strict=False)
            optimizer.load_state_dict(ckpt["optimizer"])
            step_i, skipped_total = int(ckpt["step"]), int(ckpt.get("skipped_images", 0))
            saver.resume(ckpt)
            run.restore_rng(ckpt)
        net = run.wrap(model)
        run.write_config({"model_meta": meta, "steps_per_epoch": spe, "max_iter": max_iter,
                          **provenance(run.config)})
        log.info("fss %s fold %d %d-shot: %d training images, %d steps/epoch, %d steps (stop at "
                 "%d), lr %.4g x %.3g, %s, %d rank(s); resume from step %d", cfg.dataset,
                 cfg.fold, cfg.shot, len(train_ds), spe, max_iter, stop, cfg.lr, cfg.lr_scale,
                 meta, world, step_i)
        window = WindowMeans(sums=("skipped",))

        def save(name: str | None = None) -> None:
            pending = sum(r["skipped"] for r in window.rows)  # skips not logged yet
            pending = run.sum([float(pending)])[0]
            run.save(saver, {"model": build.trainable_state(model),
                             "optimizer": optimizer.state_dict(), "epoch": step_i // spe,
                             "model_meta": meta,
                             # what qgnet-eval fss evaluates in unless told otherwise (bf16
                             # autocast is CUDA only)
                             "precision": "bf16" if cfg.amp and device.type == "cuda" else "fp32",
                             "skipped_images": skipped_total + int(round(pending))},
                     step=step_i, name=name)

        def validate() -> None:
            if val_eps is None:
                return
            from model.fss import evaluate as ev

            loader = ev.test_loader(val_eps, dataset=cfg.dataset, crop=cfg.crop, root=cfg.root,
                                    cache_dir=cfg.cache_dir, limit=cfg.val_episodes,
                                    workers=min(cfg.workers, 2), rank=run.rank, world=world,
                                    batch_size=ev.default_batch(device),
                                    pin_memory=device.type == "cuda")
            r = ev.run_episodes(model, loader, classes=np.asarray(val_eps["test_classes"]).tolist(),
                                device=device, amp=cfg.amp, progress=cfg.progress and run.main,
                                desc="val", reduce=True)
            # the mean over every rank's episodes, not rank 0's share
            n = r["episodes"]
            loss_sum, n_all = run.sum([r["loss"] * n if n else 0.0, float(n)])
            val_loss = loss_sum / n_all if n_all > 0 else float("nan")
            miou, fb = r["meter"].miou(), r["meter"].fb_iou()
            improved = saver.improved(miou, step_i)
            run.record(kind="val", step=step_i, epoch=step_i / spe, miou=miou, fb_iou=fb,
                       val_loss=val_loss, episodes=r["meter"].n_episodes,
                       val_file=Path(str(val_eps["path"])).name,
                       per_class=r["meter"].summary()["per_class"], best_miou=saver.best)
            log.info("val step %d: mIoU %.4f FB-IoU %.4f loss %.4f (best %.4f at %d)", step_i,
                     miou, fb, val_loss, saver.best, saver.best_step)
            if improved:
                save("best")
            net.train()

        run.progress(total=stop, initial=step_i)
        t_last = time.perf_counter()
        net.train()
        while step_i < stop:
            epoch = step_i // spe
            sampler = EpisodeSampler(len(train_ds), seed=cfg.seed, epoch=epoch,
                                     start=(step_i % spe) * per_rank, rank=run.rank, world=world)
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
                run.tick()
                if step_i % cfg.log_every == 0 or step_i == stop:
                    now, n_window = time.perf_counter(), len(window)
                    rec = run.window_means(window, step=step_i, hint="lower --lr")
                    skipped_total += int(round(rec.pop("skipped")))
                    run.record(kind="train", step=step_i, epoch=step_i / spe, lr=lr, **rec,
                               skipped_images=skipped_total,
                               steps_per_s=n_window / max(now - t_last, 1e-9))
                    run.show({"loss": f"{rec['loss']:.3f}", "lr": f"{lr:.2e}"},
                             "step %d/%d loss %.4f (main %.4f aux %.4f) lr %.3g", step_i, stop,
                             rec["loss"], rec["main"], rec["aux"], lr)
                    t_last = now
                epoch_end = step_i % spe == 0
                if (step_i % cfg.val_every == 0) if cfg.val_every else epoch_end:
                    validate()
                if saver.due(step_i, epoch_end=epoch_end):
                    save()
                if step_i >= stop:
                    break
        if val_eps is not None and saver.best_step < 0:
            validate()  # a run shorter than one validation period still gets a best.pt
        save()
        if val_eps is None:  # no validation: the last weights are the best we know
            save("best")
        log.info("done: %d steps, best mIoU %.4f at step %d, %d unreadable images skipped -> %s",
                 step_i, saver.best, saver.best_step, skipped_total, run_dir)
    return run_dir
