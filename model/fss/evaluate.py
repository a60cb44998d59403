"""Few-shot evaluation on fixed episodes, scored like PFENet, exactly, or like HSNet.

PFENet's protocol (``test.py`` with ``ori_resize``), see docs/fss.md::

    query, supports  -> PFENet ``Resize``: longer side to S (up or down), floored to x8,
                     top-left of an S x S canvas (model.fss.transforms.test_transform)
    logits           N x 2 x S x S -> the original H x W label, two ways in one pass
                     (model.fss.metrics.episode_confusions: on the device, no host sync):
                     "pfenet": resized to L x L (L = max(H, W), align_corners=True) and
                     cropped, PFENet's own arithmetic (the number comparable with the
                     paper's tables); "exact": the exact inverse of the resize (ours)
    meter            per class: sum I / sum U over its episodes; mIoU = mean over the fold's
                     classes with episodes; FB-IoU = mean of fg and bg IoU summed over all
                     episodes
    seeds            one episode file per seed -> mean and sample std over seeds

``scoring="hsnet"`` / ``"hsnet-original"`` is HSNet's protocol (``test.py``): query and
supports resized to a 400 x 400 square (model.fss.transforms.hsnet_transform), scored at
the square against the nearest-resized label, or with ``use_original_imgsize`` the logits
resized (``align_corners=True``) to the original label. Its input differs, so it is a pass
of its own.

Episodes are batched (``batch_size``; the counts do not depend on it), the loader pins
memory on CUDA, and the per-episode confusions stay on the device until the end of the
run (one host sync per run, none per episode). ``run_episodes`` returns them per episode
and per scoring (``per_episode``) for paired comparisons.

``evaluate`` also reports episodes/s (model + data, after the first batch) and the peak
memory (``torch.cuda.max_memory_allocated`` on GPU, the process's max RSS on CPU) and
writes ``results.json`` / ``results.md`` next to the checkpoint (entries keyed by fold,
shot, episode protocol, episode count and, for HSNet's pass, the scoring, so results sit
side by side).
"""
from __future__ import annotations

import dataclasses
import logging
import resource
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from model.fss.build import load_model, step
from model.fss.metrics import (
    DEFAULT_SCORING,
    SCORINGS,
    FewShotMeter,
    episode_confusions,
    scoring_pass,
    summarise_seeds,
)
from model.fss.regions import RegionMeter
from model.fss.results import write_results
from model.fss.transforms import HSNET_SIZE
from model.run import DEVICES
from pipeline.settings import option

log = logging.getLogger("qgnet.fss")

GPU_BATCH = 4  # episodes per forward on CUDA (the counts do not depend on it)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Every option of ``qgnet-eval fss``, resolved by :func:`pipeline.settings.resolve_config`
    (defaults < TOML ``--config`` (top level or ``[eval]``) < ``QGNET_*`` < command line).
    ``None`` is "not set": the checkpoint's training value, or the default named here."""

    checkpoint: str | None = None     # best.pt / last.pt of `qgnet-train fss` (required)
    dataset: str | None = None        # None: the checkpoint's; another: its fold 0 (cross-domain)
    shot: int | None = option(None, min=1)  # None: the training shot
    # None: the benchmark's (pipeline.benchmarks.eval_protocol): pfenet; hsnet for fss1000;
    # patnet for deepglobe, isic, chest
    protocol: str | None = option(None, choices=("pfenet", "hsnet", "patnet"))  # episode sampling
    # None: the benchmark's: pfenet; hsnet for fss1000 and the cross-domain sets
    scoring: str | None = option(None, choices=SCORINGS)  # how predictions are scored
    hsnet_size: int | None = option(None, min=9)  # hsnet scorings: the square side (None: 400)
    cache_dir: str | None = None      # None: the checkpoint's
    root: str | None = None           # None: the checkpoint's
    device: str = option("auto", choices=DEVICES)
    amp: bool | None = None           # bf16 autocast on CUDA; None: as the checkpoint was trained
    workers: int = option(2, min=0)   # DataLoader workers
    threads: int | None = option(None, min=1)  # torch CPU threads (None: torch's)
    n_episodes: int | None = option(None, min=1, flag="--episodes")  # first N of each file (None: all)
    # None: the benchmark's seed (321 PFENet; 0 HSNet, PATNet); several -> mean, std
    seeds: tuple[int, ...] | None = option(None, min=0)
    batch_size: int | None = option(None, min=1)  # None: default_batch (4 on CUDA, 1 on CPU)
    out: str | None = None            # None: next to the checkpoint
    progress: bool = True


def default_batch(device) -> int:
    """Episodes per forward: 4 on CUDA; 1 on CPU, where batching measured slower
    (docs/benchmarks.md, eval, "Throughput")."""
    return GPU_BATCH if torch.device(device).type == "cuda" else 1


def _base_dataset(ds):
    """The dataset under (nested) ``torch.utils.data.Subset`` wrappers."""
    while hasattr(ds, "dataset") and hasattr(ds, "indices"):
        ds = ds.dataset
    return ds


@torch.no_grad()
def run_episodes(model, loader, *, classes: Sequence[int], device: torch.device, amp: bool = True,
                 scoring: str = DEFAULT_SCORING, regions: bool = False, progress: bool = False,
                 desc: str = "eval", reduce: bool = False) -> dict[str, Any]:
    """Score every episode of ``loader`` (a :class:`model.fss.data.TestEpisodes` loader).

    ``scoring`` names the headline (``meter``); every scoring of the same pass
    (:func:`model.fss.metrics.scoring_pass`: ``pfenet`` and ``exact`` share PFENet's canvas)
    is computed from the same logits. The loader's dataset must have been built for that
    pass (``test_loader(..., scoring=)``).

    Returns ``meter`` (the headline FewShotMeter), ``meters`` (scoring -> FewShotMeter, the
    headline first), ``scoring``, ``loss`` (mean validation loss on the resized label),
    ``episodes``, ``seconds`` (after the first batch; the whole run when there is only
    one batch), ``episodes_per_s``, ``per_episode`` (this rank's episodes: ``episode`` (E,)
    row of the episode file, ``cls`` (E,), ``confusion``: scoring -> E x 2 x 2 as
    :func:`model.fss.metrics.episode_confusion`; used by :mod:`model.fss.compare`), and with
    ``regions`` the RegionMeters ``guided`` and ``prior`` (prior: None without a prior map;
    canvas scorings only). ``reduce``: sum the meters' counts over torch.distributed ranks
    (each rank ran its share; ``per_episode`` stays per rank).
    """
    names = scoring_pass(scoring)
    protocols = tuple(SCORINGS[n][0] for n in names)
    built_for = getattr(_base_dataset(loader.dataset), "scoring", None)
    if built_for is not None and scoring_pass(built_for)[0] not in names:
        raise ValueError(f"the loader was built for scoring {built_for!r}, which is not in the "
                         f"pass of {scoring!r}; build it with test_loader(..., scoring={scoring!r})")
    if regions and names[0].startswith("hsnet"):
        raise ValueError("region maps are scored on PFENet's canvas: use scoring 'pfenet' or 'exact'")
    was_training = model.training
    model.eval()
    guided, prior = (RegionMeter(), RegionMeter()) if regions else (None, None)
    confs, cls_list, ep_list = [], [], []  # device N x P x 2 x 2 per batch; CPU class / episode ids
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n, n_timed, t0, t_start = 0, 0, None, time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(loader.dataset), desc=desc, unit="ep", dynamic_ncols=True, leave=False)
    for batch in loader:
        r = step(model, batch, device=device, amp=amp)
        out, k, crop = r["out"], int(batch["query"].shape[0]), int(batch["query"].shape[-1])
        loss_sum += r["loss"].double() * k  # stays on the device
        confs.append(episode_confusions(out["logits"], r["batch"]["orig_label"], batch["orig_hw"],
                                        crop=crop, protocol=protocols))  # k x P x 2 x 2
        cls_list.append(batch["cls"].reshape(-1))
        ep_list.append(batch["episode"].reshape(-1) if "episode" in batch else torch.arange(n, n + k))
        if regions:  # Table 7 only: these counts sync once per episode
            for j, (h, w) in enumerate(batch["orig_hw"].tolist()):
                target = batch["orig_label"][j, :h, :w]
                guided.update(out["guided_map"][j:j + 1], target, crop=crop)
                if out.get("prior_map") is not None:
                    prior.update(out["prior_map"][j:j + 1], target, crop=crop)
        n += k
        if t0 is None:  # time from the end of the first batch (warm-up excluded)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
        else:
            n_timed += k
        if bar is not None:
            bar.update(k)
    conf = (torch.cat(confs).cpu().numpy() if confs  # the sync: E x P x 2 x 2
            else np.zeros((0, len(names), 2, 2), np.int64)).astype(np.int64)
    loss = float(loss_sum) / n if n else float("nan")
    t_end = time.perf_counter()
    secs = t_end - t0 if t0 is not None else 0.0
    if n_timed == 0 and n:  # a single batch: time it whole (warm-up included)
        n_timed, secs = n, t_end - t_start
    if bar is not None:
        bar.close()
    cls_arr = torch.cat(cls_list).numpy().astype(np.int64) if cls_list else np.zeros(0, np.int64)
    meters = {name: FewShotMeter(classes).add(cls_arr, conf[:, i]) for i, name in enumerate(names)}
    per_episode = {"episode": (torch.cat(ep_list).numpy().astype(np.int64) if ep_list
                               else np.zeros(0, np.int64)),
                   "cls": cls_arr,
                   "confusion": {name: conf[:, i] for i, name in enumerate(names)}}
    if reduce and torch.distributed.is_available() and torch.distributed.is_initialized():
        for meter in meters.values():
            t = torch.from_numpy(np.concatenate([meter.confusion.ravel(), meter.episodes])).to(device)
            torch.distributed.all_reduce(t)
            t = t.cpu().numpy()
            c = len(meter.class_ids)
            meter.confusion = t[: c * 4].reshape(c, 2, 2).astype(np.int64)
            meter.episodes = t[c * 4:].astype(np.int64)
    model.train(was_training)
    return {"meter": meters[scoring], "meters": meters, "scoring": scoring, "loss": loss,
            "episodes": n, "seconds": secs,
            "episodes_per_s": (n_timed / secs) if secs > 0 else float("nan"),
            "per_episode": per_episode,
            "guided": guided, "prior": prior if (regions and prior.episodes) else None}


def test_loader(episodes: Mapping[str, Any], *, dataset: str, crop: int, root=None, cache_dir=None,
                limit: int | None = None, batch_size: int = 1, workers: int = 0,
                rank: int = 0, world: int = 1, pin_memory: bool = False,
                scoring: str = DEFAULT_SCORING):
    """DataLoader over fixed episodes (this rank's share under DDP); ``pin_memory`` on CUDA.

    ``crop``: the canvas side (``pfenet`` / ``exact``) or HSNet's square side (``hsnet*``)."""
    from torch.utils.data import DataLoader, Subset

    from model.fss.data import TestEpisodes, collate

    ds = TestEpisodes(episodes, crop=crop, dataset=dataset, root=root, cache_dir=cache_dir,
                      limit=limit, scoring=scoring)
    if world > 1:
        ds = Subset(ds, list(range(rank, len(ds), world)))
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=collate, generator=torch.Generator().manual_seed(0),
                      persistent_workers=False, pin_memory=bool(pin_memory))


# ---------------------------------------------------------------------------- evaluate
def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process max RSS"


def checkpoint_amp(ckpt: Mapping[str, Any]) -> bool:
    """The precision a ``qgnet-train fss`` checkpoint was trained in, as an ``amp`` flag:
    its recorded ``precision`` ("bf16" / "fp32": autocast on CUDA or not), else (checkpoints
    written before it was recorded) its config's ``amp`` option."""
    if "precision" in ckpt:
        return ckpt["precision"] == "bf16"
    return bool(dict(ckpt.get("config", {})).get("amp", True))


def _aggregate(runs: Sequence[Mapping[str, Any]], names: Mapping[int, str]) -> dict[str, Any]:
    """Seed runs of one scoring -> {miou, fb_iou, miou_all_classes: {mean, std, n, values},
    per_class: class -> {name, mean, std}, missing_classes}."""
    agg = summarise_seeds([{"miou": r["miou"], "fb_iou": r["fb_iou"],
                            "miou_all_classes": r["miou_all_classes"]} for r in runs])
    classes = sorted({int(c) for r in runs for c in r["per_class"]})
    per_class = {}
    for c in classes:
        one = summarise_seeds([r["per_class"][str(c)] for r in runs if str(c) in r["per_class"]])
        per_class[str(c)] = {"name": names.get(c, str(c)), "mean": one["mean"], "std": one["std"]}
    missing = sorted({int(c) for r in runs for c in r["missing_classes"]})
    return {**agg, "per_class": per_class, "missing_classes": missing}


def evaluate(model_or_checkpoint, episodes: Mapping | Sequence[Mapping] | None = None, *,
             dataset: str | None = None, fold: int | None = None, shot: int | None = None,
             seeds: Iterable[int] | None = None, protocol: str | None = None,
             scoring: str | None = None, hsnet_size: int | None = None,
             n_episodes: int | None = None, root: str | None = None, cache_dir: str | None = None,
             crop: int | None = None, device: str = "auto", amp: bool | None = None,
             batch_size: int | None = None, workers: int = 0, progress: bool = True,
             out_dir: str | Path | None = None, write: bool = True,
             regions: bool = False, per_episode: bool = True) -> dict[str, Any]:
    """Evaluate a model or a checkpoint on fixed test episodes, one run per seed.

    Parameters
    ----------
    model_or_checkpoint : QGNet or path
        A path rebuilds the model from the checkpoint (backbone, weights, prior, crop);
        dataset, fold, root, cache_dir default to the checkpoint's training config.
    episodes : dict or list of dicts, optional
        :func:`pipeline.episode_stage.load_test_episodes` results; default: loaded for every
        seed of ``seeds`` with ``shot`` (default: the training shot) and ``protocol``.
    seeds : iterable of int, optional
        Episode seeds; default (None): the benchmark's (:func:`pipeline.benchmarks.eval_protocol`:
        321 for PFENet's protocol, 0 for HSNet's and PATNet's).
    protocol : {"pfenet", "hsnet", "patnet"}, optional
        The episode-sampling protocol: which episode files are loaded (not how they are
        scored). Default (None): the benchmark's (pfenet; hsnet for FSS-1000; patnet for
        the cross-domain sets), or the ``protocol`` the given ``episodes`` record.
    scoring : {"pfenet", "exact", "hsnet", "hsnet-original"}, optional
        Default (None): the benchmark's (pfenet; hsnet for FSS-1000 and the cross-domain
        sets, as their published tables).
        How predictions are scored (:data:`model.fss.metrics.SCORINGS`), one keyword:
        ``"pfenet"`` (PFENet's test.py, comparable with the paper's tables) and ``"exact"``
        are computed together and both reported, the named one as the headline (``miou``,
        ``fb_iou``, ``per_class``); ``"hsnet"`` / ``"hsnet-original"`` run HSNet's square
        input (``hsnet_size``, default 400) and report that scoring alone.
    n_episodes : int, optional
        Only the first N episodes of each file.
    amp : bool, optional
        bf16 autocast on CUDA; default (None): the precision the checkpoint was trained in
        (:func:`checkpoint_amp`), True for a bare model.
    out_dir : path, optional
        Where results.json / results.md go (default: next to the checkpoint; nothing is
        written for a bare model without ``out_dir``).
    batch_size : int, optional
        Episodes per forward; default :func:`default_batch` (4 on CUDA, 1 on CPU).
    per_episode : bool, default True
        Add to every run ``per_episode``: ``episode``, ``cls`` (E lists) and ``confusion``
        (scoring -> E x 2 x 2 lists), for paired bootstraps over episodes (``qgnet-eval
        compare``, the demo's QGNet - baseline interval); also written to results.json
        (about 20 KB per 1,000 episodes and scoring).

    Returns
    -------
    dict
        ``scoring`` (the headline), ``scores`` (every scoring of the pass -> ``miou`` /
        ``fb_iou`` / ``miou_all_classes`` ({mean, std, n, values} over seeds),
        ``per_class`` (class -> {name, mean, std}), ``missing_classes``, ``label``);
        ``miou`` / ``fb_iou`` / ``per_class``: the headline's; ``runs`` (one summary per
        seed, with ``scores`` and ``per_episode``), ``episodes_per_s``, ``peak_memory_mb``,
        and the settings (``input_size``: the canvas or square side the network saw).
    """
    from model.fss.config import FssConfig
    from model.utils import pick_device
    from pipeline.benchmarks import eval_protocol
    from pipeline.episode_stage import load_test_episodes
    from pipeline.episodes import PROTOCOLS
    from pipeline.errors import ConfigError
    from pipeline.settings import merge_unset, read_saved

    if scoring is not None and scoring not in SCORINGS:
        raise ConfigError(f"--scoring must be one of {', '.join(SCORINGS)}; got {scoring!r}")
    if protocol is not None and protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")
    if hsnet_size is not None and int(hsnet_size) < 9:
        raise ConfigError(f"--hsnet-size must be an int >= 9, got {hsnet_size}")
    dev = pick_device(device)
    batch_size = int(batch_size) if batch_size is not None else default_batch(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    ckpt_path = None
    cfg: dict[str, Any] = {}
    amp_from = "given"
    if isinstance(model_or_checkpoint, (str, Path)):
        ckpt_path = Path(model_or_checkpoint)
        model, ckpt = load_model(ckpt_path, device=dev)
        cfg = dict(ckpt.get("config", {}))
        if amp is None:
            amp, amp_from = checkpoint_amp(ckpt), "checkpoint"
    else:
        model = model_or_checkpoint.to(dev)
    if amp is None:
        amp, amp_from = True, "default"
    # what the caller leaves unset (None) comes from the checkpoint's training config; another
    # benchmark than the checkpoint's (cross-domain) is read at its fold 0 from its own root
    saved = {"fold": 0, "shot": 1, **read_saved(FssConfig, cfg)}
    same = dataset is None or dataset == saved.get("dataset")
    if not same:
        saved.update(fold=0, root=None)  # root None: the mask store's
    run = merge_unset(dict(dataset=dataset, fold=fold, shot=shot, root=root, cache_dir=cache_dir,
                           crop=crop), saved)
    dataset, root, cache_dir = run["dataset"], run["root"], run["cache_dir"]
    if dataset is None or run["crop"] is None:
        raise ConfigError("evaluate needs dataset and crop (given, or from the checkpoint)")
    fold, shot, crop = int(run["fold"]), int(run["shot"]), int(run["crop"])
    if isinstance(episodes, Mapping):
        episodes = [episodes]
    if protocol is None and episodes:  # given episodes say which protocol drew them
        protocol = episodes[0].get("protocol")
        protocol = str(protocol) if protocol is not None else None
    # what is still unset is the benchmark's (one place: pipeline.benchmarks.eval_protocol)
    plan = eval_protocol(dataset, protocol=protocol, scoring=scoring, seeds=seeds,
                         image_size=hsnet_size)
    protocol, scoring = plan.protocol, plan.scoring
    score_names = scoring_pass(scoring)
    hsnet = scoring.startswith("hsnet")
    input_size = int(plan.image_size or HSNET_SIZE) if hsnet else crop
    if episodes is None:
        episodes = [load_test_episodes(dataset, fold, shot, seed=int(s), protocol=protocol,
                                       cache_dir=cache_dir) for s in plan.seeds]
    names = _class_names(dataset, cache_dir)
    runs, eps_rates = [], []
    for ep in episodes:
        loader = test_loader(ep, dataset=dataset, crop=input_size, root=root, cache_dir=cache_dir,
                             limit=n_episodes, batch_size=batch_size, workers=workers,
                             pin_memory=dev.type == "cuda", scoring=scoring)
        seed = int(np.asarray(ep.get("seed", -1)))
        r = run_episodes(model, loader, classes=np.asarray(ep["test_classes"]).tolist(), device=dev,
                         amp=amp, scoring=scoring, progress=progress, desc=f"seed {seed}",
                         regions=regions)
        scores = {}
        for name, meter in r["meters"].items():
            scores[name] = {**meter.summary(), "confusion": meter.state_dict()}
        s = {k: v for k, v in scores[scoring].items()}  # the headline's fields at the top
        s.update(seed=seed, seconds=round(r["seconds"], 3), episodes_per_s=r["episodes_per_s"],
                 loss=r["loss"], scoring=scoring, scores=scores)
        if per_episode:  # model.fss.compare pairs two models' episodes (results.json too)
            pe = r["per_episode"]
            s["per_episode"] = {"episode": pe["episode"].tolist(), "cls": pe["cls"].tolist(),
                                "confusion": {k: v.tolist() for k, v in pe["confusion"].items()}}
        if regions:
            s["guided"] = r["guided"].summary()
            s["prior"] = r["prior"].summary() if r["prior"] is not None else None
        runs.append(s)
        eps_rates.append(r["episodes_per_s"])
        log.info("seed %s: %s", seed, "; ".join(
            f"{k} scoring mIoU {v['miou']:.4f} FB-IoU {v['fb_iou']:.4f}" for k, v in scores.items())
            + f" ({s['episodes']} episodes, {r['episodes_per_s']:.2f} episodes/s)")
    per_scoring = {}
    for name in score_names:
        agg = _aggregate([r["scores"][name] for r in runs], names)
        per_scoring[name] = {**agg, "label": SCORINGS[name][1],
                             "comparable_with_paper": name == "pfenet"}
    head = per_scoring[scoring]
    mem, mem_kind = peak_memory_mb(dev)
    result = {
        "checkpoint": str(ckpt_path) if ckpt_path else None, "dataset": dataset, "fold": fold,
        "shot": shot, "protocol": protocol, "scoring": scoring, "seeds": [r["seed"] for r in runs],
        "benchmark": plan.benchmark.name,
        "benchmark_defaults": [k for k in ("protocol", "scoring", "seeds") if k not in plan.given],
        "episodes": [r["episodes"] for r in runs], "crop": crop, "input_size": input_size,
        "use_prior_map": bool(getattr(model, "use_prior_map", True)),
        "miou": head["miou"], "fb_iou": head["fb_iou"], "per_class": head["per_class"],
        "scores": per_scoring, "runs": runs,
        "episodes_per_s": float(np.nanmean(eps_rates)) if eps_rates else float("nan"),
        "peak_memory_mb": round(mem, 1), "peak_memory_kind": mem_kind, "device": str(dev),
        "batch_size": batch_size, "amp": bool(amp and dev.type == "cuda"), "amp_from": amp_from,
    }
    target = Path(out_dir) if out_dir else (ckpt_path.parent if ckpt_path else None)
    if write and target is not None:
        key = "-".join(k for k in ((None if same else dataset), "regions" if regions else None)
                       if k)  # another dataset's result never replaces the checkpoint's own
        write_results(target, result, key=key or None)
    return result


def _class_names(dataset: str, cache_dir) -> dict[int, str]:
    from pipeline.errors import QgnetError
    from pipeline.mask_stage import locate_mask_store

    try:
        from pipeline.benchmarks import eval_split

        store = locate_mask_store(dataset, eval_split(dataset), cache_dir=cache_dir)
    except QgnetError:  # names are cosmetic: no complete val mask store, the ids are shown
        return {}
    return {i + 1: n for i, n in enumerate(store.attrs.get("class_names", []))}
