"""Pretraining loop of the prior extractor: MoCo v2 with global and superpixel-local InfoNCE.

The data flow of one run::

    dataset reader + superpixel store --PriorPairs/EpochSampler/DataLoader--> batch
        batch {"im_q","im_k","map_q","map_k",...} --train_step--> losses, SGD update
        every --ckpt-every steps and at each epoch end --> checkpoints/step-XXXXXXX.pt
        at the end --> prior_extractor.pt (key encoder backbone, see model.prior.export)

Outputs in the run dir: ``config.json`` (the resolved config), ``metrics.jsonl`` (one
object per logged step), ``train.log`` (human log), ``checkpoints/`` and
``prior_extractor.pt``. Only rank 0 writes.

Recipe (MoCo v2, facebookresearch/moco ``main_moco.py``): SGD momentum 0.9, weight decay
1e-4 on every trained parameter, lr 0.03 x batch / 256 (global batch), cosine decay to 0,
no warmup. **Deviation:** MoCo steps the cosine once per epoch; we step it every
optimisation step (``schedule="cosine"``), which is smoother for short runs and identical
in the limit; ``schedule="cosine-epoch"`` gives MoCo's staircase. The schedule always spans
``epochs x steps_per_epoch``; ``max_steps`` only stops the run early (a "kill" that resumes
exactly).

Exact resume: a checkpoint holds the model (both encoders, heads, both queues), the
optimizer, the scheduler, the step, the epoch and the number of batches already consumed in
it, every rank's RNG states and the resolved config. The data of a step depends only on
``(seed, epoch, index)`` (see :mod:`model.prior.data`), and the DataLoader has its own
generator, so nothing else touches the global RNG between steps: a resumed run computes the
same losses as the uninterrupted one (on CPU; CUDA kernels may differ in the last bits).
"""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import torch

from model import checkpoint as ckpt_lib
from model.prior.config import (
    EXPORT_NAME,
    RESUMABLE,
    SPLITS,
    PriorConfig,
    build_model,
    finalize_config,
)
from model.prior.device_augment import DevicePrefetcher, batch_to_device
from model.utils import DistInfo, autocast
from pipeline.errors import ConfigError
from pipeline.settings import config_dict

log = logging.getLogger("qgnet.prior")

CKPT_DIR = "checkpoints"


def find_checkpoint(where: str | os.PathLike) -> Path:
    """A checkpoint file as given, or the newest complete ``step-*.pt`` of a run dir
    (:func:`model.checkpoint.find_checkpoint`; ``*.tmp<pid>`` leftovers are never picked)."""
    return ckpt_lib.find_checkpoint(where, kind="prior")


# ------------------------------------------------------------------------------ building
def build_optimizer(model: torch.nn.Module, cfg: PriorConfig, *, steps_per_epoch: int):
    """SGD (momentum, weight decay on every trained parameter, as MoCo) and its schedule."""
    params = [p for p in model.parameters() if p.requires_grad]  # key encoder excluded
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.sgd_momentum,
                          weight_decay=cfg.weight_decay)
    total = max(cfg.epochs * steps_per_epoch, 1)
    return opt, torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(step, total=total, steps_per_epoch=steps_per_epoch,
                                    schedule=cfg.schedule))


def lr_factor(step: int, *, total: int, steps_per_epoch: int, schedule: str) -> float:
    """Multiplier of the base lr before optimisation step ``step`` (0-based).

    ``cosine``: ``0.5 (1 + cos(pi step / total))``; ``cosine-epoch``: the same with
    ``step`` replaced by ``epoch / epochs`` (MoCo); ``constant``: 1.
    """
    if schedule == "constant":
        return 1.0
    if schedule == "cosine-epoch":
        epoch, epochs = step // steps_per_epoch, max(total // steps_per_epoch, 1)
        return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def build_data(cfg: PriorConfig, dinfo: DistInfo, *, device: torch.device):
    """Dataset reader, patch store check, PriorPairs, EpochSampler and DataLoader."""
    from model.prior.augment import PairedAugment, PairedCrop
    from model.prior.data import EpochSampler, PriorPairs, check_patch_store, collate
    from pipeline.datasets import open_dataset
    from pipeline.store import ShardedStore

    ds = open_dataset(cfg.dataset, cfg.root, cache_dir=cfg.cache_dir, year=cfg.year)
    parts = []
    for k, split in enumerate(SPLITS.get(cfg.split, (cfg.split,))):
        ids = ds.ids(split)
        if cfg.limit is not None:
            ids = ids[: cfg.limit]
        hint = _store_command(cfg, split)
        if cfg.patch_store is not None:
            store = ShardedStore.open(Path(cfg.patch_store), kind="superpixels", hint=hint)
        else:
            from pipeline.superpixel_stage import locate_superpixel_store

            store = locate_superpixel_store(ds.name, split, cfg.patches, cache_dir=cfg.cache_dir)
        store_path = store.path
        check_patch_store(store, dataset=ds.name, split=split, split_ids=ids, hint=hint)
        if store.attrs.get("method") not in (None, cfg.patches):
            raise ConfigError(f"patch store {store_path} holds {store.attrs.get('method')} maps but "
                             f"--patches {cfg.patches} was asked for")
        del store
        # another seed per split, so image i of train and image i of val get other views
        parts.append(PriorPairs(ds, store_path, ids,
                                augment=(PairedCrop if cfg.augment_on == "device" else PairedAugment)(
                                    size=cfg.crop, scale=(cfg.scale_min, 1.0)),
                                seed=cfg.seed + 1_000_003 * k))
    pairs = parts[0] if len(parts) == 1 else ConcatPairs(parts)
    per_rank = cfg.batch_size // dinfo.world_size
    if len(pairs) // dinfo.world_size < per_rank:
        raise ConfigError(f"{len(pairs)} usable images cannot fill one batch of {cfg.batch_size} "
                         f"over {dinfo.world_size} process(es); lower --batch-size")
    sampler = EpochSampler(len(pairs), seed=cfg.seed, rank=dinfo.rank, world=dinfo.world_size)
    loader = torch.utils.data.DataLoader(
        pairs, batch_size=per_rank, sampler=sampler, drop_last=True, collate_fn=collate,
        num_workers=cfg.workers, persistent_workers=cfg.workers > 0,
        pin_memory=device.type == "cuda", prefetch_factor=4 if cfg.workers > 0 else None,
        generator=torch.Generator().manual_seed(cfg.seed))  # never touches the global RNG
    return pairs, sampler, loader


class ConcatPairs(torch.utils.data.Dataset):
    """Several :class:`model.prior.data.PriorPairs` (one per split) as one, indexed like
    them by ``(epoch, index)`` (``--split all``)."""

    def __init__(self, parts):
        self.parts = list(parts)
        self.offsets = [0]
        for p in self.parts:
            self.offsets.append(self.offsets[-1] + len(p))
        self.dropped = [i for p in self.parts for i in p.dropped]

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        k = max(j for j in range(len(self.parts)) if self.offsets[j] <= index)
        item = self.parts[k][(epoch, index - self.offsets[k])]
        item["index"] = item["index"] + self.offsets[k]  # position in the concatenation
        return item


def _store_command(cfg: PriorConfig, split: str | None = None) -> str:
    from pipeline.superpixel_stage import build_command

    cmd = build_command(cfg.dataset, split or cfg.split, cfg.patches)
    if cfg.root is not None:
        cmd += f" --root {cfg.root}"
    if cfg.cache_dir is not None:
        cmd += f" --cache-dir {cfg.cache_dir}"
    return cmd


# ------------------------------------------------------------------------------ the step
def train_step(model, batch: dict[str, torch.Tensor], optimizer, scheduler, *,
               device: torch.device, amp: bool = True, channels_last: bool = False
               ) -> dict[str, torch.Tensor]:
    """One optimisation step (shared by the trainer and ``bench/prior_step.py``).

    1. move the views and patch maps to ``device`` (non-blocking from pinned memory; a
       batch from :class:`~model.prior.device_augment.DevicePrefetcher` is there already) and,
       for ``--augment-on device`` batches, flip, jitter, grayscale, blur and normalise them
       there (:func:`~model.prior.device_augment.batch_to_device`);
    2. forward: momentum update of the key encoder, keys (shuffled), global and local
       InfoNCE, enqueue (all inside ``PriorMoCo.forward``), under bf16 autocast on CUDA;
    3. backward through the query encoder and heads;
    4. SGD step and lr schedule step;
    5. return the scalars as detached 0-d fp32 tensors on ``device``: nothing in the step
       waits for the device (given the batch's host-side ``"max_id"``); the caller reads
       them on the host at its log steps only (``tests/model/test_syncs.py``).
    """
    b = batch_to_device(batch, device, channels_last=channels_last)
    im_q, im_k = b["im_q"], b["im_k"]  # N x 3 x S x S float, normalised
    map_q, map_k = b["map_q"], b["map_k"]  # N x S x S int64
    with autocast(device, enabled=amp):
        out = model(im_q, im_k, map_q, map_k, max_id=batch.get("max_id"))
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    optimizer.step()
    scheduler.step()
    return {k: v.detach().float().mean() for k, v in out.items() if k in SCALARS}


SCALARS = ("loss", "loss_global", "loss_local", "acc_global", "acc_local", "n_patches",
           "cos_global", "cos_local")


# ------------------------------------------------------------------------------ the run
def train_prior(cfg: PriorConfig) -> Path:
    """Pretrain (or resume, or export) as ``cfg`` says; return the run dir.

    Launch under ``torchrun --nproc-per-node N`` for DDP (gloo on CPU, nccl on GPU); every
    rank must get the same ``cfg``.
    """
    from model.checkpoint import CheckpointSaver, WindowMeans, seed_everything
    from model.run import Run

    with Run("prior", device=cfg.device, log=log, progress=cfg.progress) as run:
        device = run.device
        cfg = finalize_config(cfg, world=run.world)
        config = config_dict(cfg)  # what checkpoints and config.json record
        run_dir, ckpt = run.locate(config, cls=PriorConfig, kind="prior", resumable=RESUMABLE,
                                   other_out=cfg.export_only)
        if cfg.export_only:  # --out, when given, is where the export goes
            if run.main:
                from model.prior.export import export_prior

                target = Path(cfg.out if cfg.out is not None else run_dir) / EXPORT_NAME
                print(f"exported {export_prior(ckpt['path'], target)}")
            return Path(cfg.out) if cfg.out is not None else run_dir

        seed_everything(cfg.seed)
        pairs, sampler, loader = build_data(cfg, run.dist, device=device)  # checked, not written
        steps_per_epoch = sampler.num_samples // loader.batch_size  # drop_last
        total_steps = cfg.epochs * steps_per_epoch
        last_step = min(total_steps, cfg.max_steps) if cfg.max_steps is not None else total_steps
        run.open(run_dir, config, resumed=ckpt, kind="prior", folders=(CKPT_DIR,))

        model = build_model(cfg).to(device)
        if device.type == "cuda" and cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer, scheduler = build_optimizer(model, cfg, steps_per_epoch=steps_per_epoch)
        step, epoch, pos, skipped_total = 0, 0, 0, 0
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            step, epoch, pos = int(ckpt["step"]), int(ckpt["epoch"]), int(ckpt["batch_in_epoch"])
            skipped_total = int(ckpt.get("skipped_images", 0))
            run.restore_rng(ckpt)
        net = run.wrap(model, broadcast_buffers=False,  # queues: gathered keys, equal on all ranks
                       find_unused_parameters=False)  # PriorMoCo builds only the heads its loss uses

        meta = {"images": len(pairs), "dropped_failed": len(pairs.dropped),
                "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                "world_size": run.world, "device": str(device)}
        run.write_config({"_run": meta})
        if run.main:
            log.info("prior pretraining in %s: %s", run_dir, meta)
            log.info("config: %s", run.config)
            if pairs.dropped:
                log.warning("%d images failed in the patch store and are left out (e.g. %s)",
                            len(pairs.dropped), pairs.dropped[:3])
            if ckpt is not None:
                log.info("resumed from step %d (epoch %d, batch %d)", step, epoch, pos)
        run.progress(total=last_step, initial=step)
        window = WindowMeans(sums=("skipped",))
        saver = CheckpointSaver(run_dir / CKPT_DIR, kind="prior", keep=cfg.keep_checkpoints,
                                every=cfg.ckpt_every, stop=last_step)
        t_wait = t_total = 0.0

        net.train()
        while step < last_step:
            sampler.set_epoch(epoch, start=pos * loader.batch_size)
            it = iter(DevicePrefetcher(loader, device))  # next batch's copy overlaps this step
            t0 = time.perf_counter()
            while pos < steps_per_epoch and step < last_step:
                batch = next(it)
                t1 = time.perf_counter()
                out = train_step(net, batch, optimizer, scheduler, device=device, amp=cfg.amp,
                                 channels_last=device.type == "cuda" and cfg.channels_last)
                step, pos = step + 1, pos + 1
                t2 = time.perf_counter()
                t_wait, t_total, t0 = t_wait + (t1 - t0), t_total + (t2 - t0), t2
                out["skipped"] = sum(batch["skipped"].tolist())  # host count (the loader's)
                window.add(**out)  # device tensors: read on the host at log steps only (no sync)
                epoch_end = pos == steps_per_epoch
                if step % cfg.log_every == 0 or step == last_step or epoch_end:
                    n_window = len(window)
                    rec = run.window_means(window, step=step, hint=(
                        f"lower --lr (now {cfg.lr}) or check the data"))
                    for k in SCALARS:
                        rec.setdefault(k, float("nan"))
                    skipped_total += int(rec.pop("skipped"))
                    rec = {"step": step, "epoch": epoch + pos / steps_per_epoch,
                           "lr": optimizer.param_groups[0]["lr"], **rec,
                           "images_per_s": n_window * cfg.batch_size / max(t_total, 1e-9),
                           "data_wait": t_wait / max(t_total, 1e-9),
                           "skipped_images": skipped_total}
                    run.record(**{k: round(v, 6) if isinstance(v, float) else v
                                  for k, v in rec.items()})
                    run.show({"loss": f"{rec['loss']:.3f}", "g": f"{rec['loss_global']:.3f}",
                              "l": f"{rec['loss_local']:.3f}", "ips": f"{rec['images_per_s']:.0f}"},
                             "step %d/%d epoch %.2f loss %.4f (global %.4f, local %.4f) acc %.3f "
                             "cos %.2f/%.2f lr %.4g %.1f img/s wait %.0f%%", step, last_step,
                             rec["epoch"], rec["loss"], rec["loss_global"], rec["loss_local"],
                             rec["acc_global"], rec["cos_global"], rec["cos_local"], rec["lr"],
                             rec["images_per_s"], 100 * rec["data_wait"])
                    t_wait, t_total = 0.0, 0.0
                run.tick()
                if saver.due(step, epoch_end=epoch_end):
                    done = pos == steps_per_epoch
                    path = run.save(saver, {
                        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "epoch": epoch + 1 if done else epoch, "batch_in_epoch": 0 if done else pos,
                        "skipped_images": skipped_total}, step=step)
                    if path is not None:
                        log.info("checkpoint (%s): %s",
                                 f"end of epoch {epoch}" if epoch_end else f"step {step}", path)
                t0 = time.perf_counter()  # checkpoint time is not counted as data wait
            if pos == steps_per_epoch:
                epoch, pos = epoch + 1, 0
            del it
        if run.main:
            log.info("finished at step %d (epoch %d); %d unreadable images skipped", step, epoch,
                     skipped_total)
            if step > 0:
                from model.prior.export import export_prior

                latest = find_checkpoint(run_dir)
                log.info("exported %s", export_prior(latest, run_dir / EXPORT_NAME))
        if run.dist.enabled:
            torch.distributed.barrier()
    return run_dir
