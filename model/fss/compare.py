"""Is a gap real? Two models scored on the same episodes, with a paired bootstrap.

Few-shot papers report one run on 1,000 episodes; whether "B beats A" is more than
episode noise is a question about the *pair* of scores, since both models see the same
queries and supports. The pure core works on per-episode counts (arrays in, numbers out)::

    cls        E          class id of each episode
    conf_a/b   E x 2 x 2  confusion counts C[t, p] of each episode (model A / B)
    group      E          episode file (seed) of each episode; metrics are computed per
                          file and averaged over files, as ``qgnet-eval fss`` does

    mIoU  = mean over classes c of  sum_{e in c} I_e / sum_{e in c} U_e     (foreground)
    FB-IoU = (IoU_fg + IoU_bg) / 2, each summed over all episodes            (PFENet)

Paired bootstrap (Efron & Tibshirani 1993, ch. 13; the test of Koehn 2004 for MT): draw
E episodes with replacement *within each file*, score A and B on the *same* draw, take
B - A; repeat R times (R >= 1,000, seeded). The 95 % interval is the 2.5 / 97.5
percentiles of the R differences. Identical models give exactly 0 on every draw.

:func:`compare_results` compares two :func:`model.fss.evaluate.evaluate` results (each
run carries its ``per_episode`` counts, also in ``results.json``), so two finished
``qgnet-eval fss`` runs compare without scoring again (``make demo`` does this);
:func:`compare_checkpoints` scores both checkpoints first. ``qgnet-eval compare`` is its
click shell.

References
----------
.. [1] B. Efron, R. Tibshirani, An Introduction to the Bootstrap, 1993, ch. 13 and 16.
.. [2] P. Koehn, Statistical significance tests for machine translation evaluation,
       EMNLP 2004 (paired bootstrap resampling).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["bootstrap_difference", "compare_checkpoints", "compare_results", "episode_metrics",
           "format_text"]

_EPS = 1e-10  # PFENet's I / (U + 1e-10), as model.fss.metrics


def _check(cls, conf) -> tuple[np.ndarray, np.ndarray]:
    cls = np.asarray(cls, dtype=np.int64).reshape(-1)
    conf = np.asarray(conf, dtype=np.int64)
    if conf.shape != (cls.size, 2, 2):
        raise ValueError(f"confusion must be E x 2 x 2 with E = {cls.size} episodes, got {conf.shape}")
    return cls, conf


def _weighted_metrics(cls: np.ndarray, conf: np.ndarray, weights: np.ndarray,
                      class_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """mIoU and FB-IoU for each row of ``weights`` (R x E episode multiplicities) -> (R,), (R,)."""
    onehot = (cls[:, None] == np.asarray(class_ids)[None, :]).astype(np.float64)  # E x C
    w = weights.astype(np.float64)  # R x E
    fg_i = conf[:, 1, 1].astype(np.float64)  # E
    fg_u = (conf[:, 1, 1] + conf[:, 0, 1] + conf[:, 1, 0]).astype(np.float64)
    bg_i = conf[:, 0, 0].astype(np.float64)
    bg_u = (conf[:, 0, 0] + conf[:, 0, 1] + conf[:, 1, 0]).astype(np.float64)
    inter = (w * fg_i) @ onehot  # R x C
    union = (w * fg_u) @ onehot
    seen = (w @ onehot) > 0  # R x C: classes with episodes in the draw (others left out)
    iou = np.where(seen, inter / (union + _EPS), 0.0)
    n_seen = seen.sum(axis=1)
    miou = np.where(n_seen > 0, iou.sum(axis=1) / np.maximum(n_seen, 1), np.nan)
    fg = (w @ fg_i) / (w @ fg_u + _EPS)  # R
    bg = (w @ bg_i) / (w @ bg_u + _EPS)
    return miou, (fg + bg) / 2


def episode_metrics(cls, conf, *, class_ids: Sequence[int] | None = None) -> dict[str, float]:
    """mIoU and FB-IoU from per-episode counts, exactly as :class:`model.fss.metrics.FewShotMeter`.

    Parameters
    ----------
    cls : array, E
        Class id of each episode.
    conf : array, E x 2 x 2
        Per-episode confusion ``C[t, p]`` (:func:`model.fss.metrics.episode_confusion`).
    class_ids : sequence of int, optional
        The fold's test classes (default: the classes present); classes without an
        episode are left out of the mean, as the meter does.

    Examples
    --------
    >>> conf = np.array([[[5, 0], [0, 5]], [[5, 5], [0, 0]]])  # perfect, then all wrong
    >>> round(episode_metrics([1, 2], conf)["miou"], 6)
    0.5
    """
    cls, conf = _check(cls, conf)
    ids = sorted(set(cls.tolist())) if class_ids is None else sorted(int(c) for c in class_ids)
    miou, fb = _weighted_metrics(cls, conf, np.ones((1, cls.size)), ids)
    return {"miou": float(miou[0]), "fb_iou": float(fb[0])}


def bootstrap_difference(cls, conf_a, conf_b, *, group=None, class_ids: Sequence[int] | None = None,
                         resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Paired bootstrap of B - A (mIoU and FB-IoU) over episodes.

    Parameters
    ----------
    cls : array, E
        Class of each episode (the same episodes for both models).
    conf_a, conf_b : arrays, E x 2 x 2
        Per-episode confusion counts of model A and model B.
    group : array, E, optional
        Episode file of each episode (e.g. its seed). Metrics are per group, then averaged
        over groups; resampling stays within each group. Default: one group.
    class_ids : sequence of int, optional
        Test classes (default: those present).
    resamples : int
        Bootstrap draws R (>= 1,000 for a 95 % interval).
    seed : int
        Seed of the draws (same inputs and seed -> same interval).
    level : float
        Confidence level of the percentile interval.

    Returns
    -------
    dict
        For ``"miou"`` and ``"fb_iou"``: ``estimate`` (B - A on all episodes), ``ci95``
        ([low, high] percentile interval), ``se`` (std of the draws), ``p_le_0`` (share of
        draws with B - A <= 0); plus ``resamples``, ``seed``, ``level``, ``episodes``.
    """
    cls, conf_a = _check(cls, conf_a)
    _, conf_b = _check(cls, conf_b)
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    group = np.zeros(cls.size, dtype=np.int64) if group is None else np.asarray(group).reshape(-1)
    if group.size != cls.size:
        raise ValueError(f"group has {group.size} entries for {cls.size} episodes")
    ids = sorted(set(cls.tolist())) if class_ids is None else sorted(int(c) for c in class_ids)
    rng = np.random.default_rng(seed)
    est = {"miou": [], "fb_iou": []}
    draws = {"miou": np.zeros(resamples), "fb_iou": np.zeros(resamples)}
    groups = sorted(set(group.tolist()))
    for g in groups:
        sel = np.flatnonzero(group == g)
        c, a, b = cls[sel], conf_a[sel], conf_b[sel]
        ones = np.ones((1, sel.size))
        ma, fa = _weighted_metrics(c, a, ones, ids)
        mb, fb = _weighted_metrics(c, b, ones, ids)
        est["miou"].append(mb[0] - ma[0])
        est["fb_iou"].append(fb[0] - fa[0])
        # R x E_g multiplicities: each row one draw of E_g episodes with replacement
        w = rng.multinomial(sel.size, np.full(sel.size, 1.0 / sel.size), size=resamples)
        ma, fa = _weighted_metrics(c, a, w, ids)
        mb, fb = _weighted_metrics(c, b, w, ids)
        draws["miou"] += (mb - ma) / len(groups)
        draws["fb_iou"] += (fb - fa) / len(groups)
    alpha = (1 - level) / 2
    out: dict[str, Any] = {}
    for k, d in draws.items():
        lo, hi = np.nanquantile(d, [alpha, 1 - alpha])
        out[k] = {"estimate": float(np.mean(est[k])), "ci95": [float(lo), float(hi)],
                  "se": float(np.nanstd(d, ddof=1)) if resamples > 1 else 0.0,
                  "p_le_0": float(np.mean(d <= 0))}
    out.update(resamples=int(resamples), seed=int(seed), level=float(level), episodes=int(cls.size),
               groups=[int(g) for g in groups])
    return out


# ---------------------------------------------------------------------------- evaluator results
def _episode_confusion(run: Mapping[str, Any], scoring: str) -> np.ndarray:
    """E x 2 x 2 per-episode counts of ``run`` under ``scoring`` (a result written before
    scorings were recorded holds one list, scored with the exact inverse)."""
    conf = run["per_episode"]["confusion"]
    if not isinstance(conf, Mapping):
        conf = {"exact": conf}
    if scoring not in conf:
        raise ValueError(f"the result has per-episode counts under {sorted(conf)} scoring, not "
                         f"{scoring!r}; score the checkpoint with qgnet-eval fss --scoring {scoring}")
    return np.asarray(conf[scoring], dtype=np.int64).reshape(-1, 2, 2)


def _scored(result: Mapping[str, Any], scoring: str) -> dict[str, Any]:
    """The {miou, fb_iou} ({mean, std, n, values}) of ``result`` under ``scoring``."""
    scores = result.get("scores") or {"exact": result}
    if scoring not in scores:
        raise ValueError(f"the result was scored with {sorted(scores)}, not {scoring!r}")
    return {"miou": scores[scoring]["miou"], "fb_iou": scores[scoring]["fb_iou"]}


def compare_results(result_a: Mapping[str, Any], result_b: Mapping[str, Any], *,
                    scoring: str | None = None, resamples: int = 2000,
                    seed: int = 0) -> dict[str, Any]:
    """Compare two :func:`model.fss.evaluate.evaluate` results (each run's ``per_episode``).

    Both must score the same episode files (dataset, fold, shot, protocol, seeds and the
    class of every episode agree) with the same input (``input_size``), else ValueError.
    ``scoring``: which scoring's per-episode counts are paired (any of the pass: "pfenet"
    or "exact" from one canvas pass); default: result A's headline.

    Returns
    -------
    dict
        ``scoring`` and ``scoring_label``; ``a`` / ``b``: ``checkpoint``, ``use_prior_map``,
        ``miou`` / ``fb_iou`` ({mean, std, n, values} over episode seeds, as the evaluator
        reports them under that scoring); ``diff``: :func:`bootstrap_difference` of B - A;
        ``per_episode``: ``cls``, ``seed``, ``conf_a``, ``conf_b``; and ``dataset``,
        ``fold``, ``shot``, ``protocol``, ``seeds``, ``episodes``.
    """
    from model.fss.metrics import SCORINGS

    for key in ("dataset", "fold", "shot", "protocol", "seeds", "episodes", "input_size"):
        if result_a.get(key) != result_b.get(key):
            raise ValueError(f"the two results were scored on different episodes: {key} "
                             f"{result_a.get(key)!r} vs {result_b.get(key)!r}")
    scoring = scoring or result_a.get("scoring", "exact")
    cls, group, conf = [], [], {"a": [], "b": []}
    for ra, rb in zip(result_a["runs"], result_b["runs"], strict=True):
        if "per_episode" not in ra or "per_episode" not in rb:
            raise ValueError("a result without per-episode counts (written before they were "
                             "recorded); score the checkpoint again with qgnet-eval fss")
        ca = np.asarray(ra["per_episode"]["cls"], dtype=np.int64)
        if not np.array_equal(ca, np.asarray(rb["per_episode"]["cls"], dtype=np.int64)):
            raise ValueError(f"episode classes differ for seed {ra.get('seed')}: not the same episodes")
        cls.append(ca)
        group.append(np.full(ca.size, int(ra.get("seed", 0))))
        conf["a"].append(_episode_confusion(ra, scoring))
        conf["b"].append(_episode_confusion(rb, scoring))
    cls_all, grp = np.concatenate(cls), np.concatenate(group)
    conf_a, conf_b = np.concatenate(conf["a"]), np.concatenate(conf["b"])
    class_ids = sorted({int(c) for c in result_a.get("per_class", {})} | set(cls_all.tolist()))
    diff = bootstrap_difference(cls_all, conf_a, conf_b, group=grp, class_ids=class_ids,
                                resamples=resamples, seed=seed)
    side = {k: {"checkpoint": r.get("checkpoint"), "use_prior_map": r.get("use_prior_map"),
                **_scored(r, scoring)}
            for k, r in (("a", result_a), ("b", result_b))}
    return {"dataset": result_a["dataset"], "fold": result_a["fold"], "shot": result_a["shot"],
            "protocol": result_a["protocol"], "seeds": list(result_a["seeds"]),
            "scoring": scoring, "scoring_label": SCORINGS.get(scoring, ("", ""))[1],
            "episodes": int(cls_all.size), **side, "diff": diff,
            "per_episode": {"cls": cls_all.tolist(), "seed": grp.tolist(),
                            "conf_a": conf_a.tolist(), "conf_b": conf_b.tolist()}}


def compare_checkpoints(checkpoint_a: str | Path, checkpoint_b: str | Path, *,
                        seeds: Sequence[int] = (321,), protocol: str = "pfenet",
                        scoring: str = "pfenet", hsnet_size: int | None = None,
                        n_episodes: int | None = None, shot: int | None = None,
                        resamples: int = 2000, bootstrap_seed: int = 0,
                        cache_dir: str | None = None, root: str | None = None,
                        device: str = "auto", amp: bool | None = None, batch_size: int = 1,
                        workers: int = 0, progress: bool = True) -> dict[str, Any]:
    """Score two ``qgnet-train fss`` checkpoints on the same episode files and compare.

    Each is scored by :func:`model.fss.evaluate.evaluate` (its own training crop, the
    evaluator's scoring path, ``scoring`` as there, each in its training precision unless
    ``amp`` is given, nothing written); dataset, fold and shot come from checkpoint A, and
    B must have been trained on the same dataset, fold and shot (a 5-shot model scored on
    1-shot episodes beside a 1-shot one is not the comparison either run reports). Returns
    :func:`compare_results` paired under ``scoring``.
    """
    from model.fss.config import FssConfig
    from model.fss.evaluate import evaluate
    from model.utils import load_checkpoint
    from pipeline.errors import ConfigError
    from pipeline.settings import merge_unset, read_saved

    cfgs = [dict(load_checkpoint(ck).get("config", {})) for ck in (checkpoint_a, checkpoint_b)]
    for key in ("dataset", "fold", "shot"):
        if cfgs[0].get(key) != cfgs[1].get(key):
            raise ConfigError(f"--checkpoint {checkpoint_a} and {checkpoint_b} were trained with "
                              f"{key} {cfgs[0].get(key)!r} and {cfgs[1].get(key)!r}; compare models "
                              f"of the same dataset, fold and shot")
    # what is left unset (None) comes from checkpoint A's training config
    run = merge_unset({"shot": shot, "cache_dir": cache_dir, "root": root},
                      {"shot": 1, **read_saved(FssConfig, cfgs[0])})
    shot, cache_dir, root = int(run["shot"]), run["cache_dir"], run["root"]
    results = [evaluate(ck, seeds=seeds, protocol=protocol, scoring=scoring, hsnet_size=hsnet_size,
                        n_episodes=n_episodes, shot=shot, cache_dir=cache_dir, root=root,
                        device=device, amp=amp, batch_size=batch_size, workers=workers,
                        progress=progress, write=False)
               for ck in (checkpoint_a, checkpoint_b)]
    return compare_results(results[0], results[1], scoring=scoring, resamples=resamples,
                           seed=bootstrap_seed)


def format_text(result: Mapping[str, Any], *, names: Sequence[str] = ("A", "B")) -> str:
    """A Markdown table of both models and the difference B - A with its interval (in %)."""
    def pm(d):
        return f"{d['mean'] * 100:.2f} ± {d['std'] * 100:.2f}" if d["n"] > 1 else f"{d['mean'] * 100:.2f}"

    d = result["diff"]
    lvl = int(round(d["level"] * 100))
    scoring = result.get("scoring", "exact")
    lines = [f"{result['dataset']} fold {result['fold']}, {result['shot']}-shot, {result['protocol']} "
             f"episodes, seeds {result['seeds']} ({result['episodes']} episodes in all), scored "
             f"with {scoring}" + (f" ({result['scoring_label']})" if result.get("scoring_label") else ""),
             "",
             "| model | checkpoint | mIoU (%) | FB-IoU (%) |", "|---|---|---:|---:|"]
    for key, name in zip("ab", names, strict=True):
        r = result[key]
        lines.append(f"| {name} | {r['checkpoint']} | {pm(r['miou'])} | {pm(r['fb_iou'])} |")
    lines += ["", f"| {names[1]} - {names[0]} | estimate | paired bootstrap {lvl} % CI | "
                  f"share of draws <= 0 |", "|---|---:|---|---:|"]
    for k, label in (("miou", "mIoU"), ("fb_iou", "FB-IoU")):
        lo, hi = d[k]["ci95"]
        lines.append(f"| {label} | {d[k]['estimate'] * 100:+.2f} | [{lo * 100:+.2f}, {hi * 100:+.2f}] | "
                     f"{d[k]['p_le_0']:.3f} |")
    lines += ["", f"{d['resamples']} resamples of the episodes (within each episode file), seed "
                  f"{d['seed']}. The interval covers episode noise only; training noise (another "
                  f"training seed) is usually larger, see bench/seeds.py."]
    return "\n".join(lines)
