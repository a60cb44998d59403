"""The benchmarks the few-shot literature reports, each with its own protocol: one registry.

A plain dict, name -> :class:`Benchmark`: which reader reads it, which mask-store split the
test episodes index, the episode protocol, count and seed, the image size and scoring the
published tables use, and where to get the data. ``qgnet-prep episodes`` takes its
defaults from here; a command that evaluates one checkpoint on several benchmarks can
enumerate them, find their data and build their episodes from these fields alone.

>>> BENCHMARKS["fss1000"].eval_split, BENCHMARKS["fss1000"].scoring
('test', 'hsnet')
>>> benchmark_for("camvid").protocol  # any folder dataset: PFENet's protocol
'pfenet'

Sources (read, see docs/data.md and docs/episodes.md): PFENet ``test.py`` and QGNet's
``train.py`` (PASCAL-5i, COCO-20i); HSNet ``test.py``, ``data/fss.py`` (FSS-1000); PATNet
``test.py``, ``data/{deepglobe,isic,lung,fss}.py`` (the cross-domain four).
"""
from __future__ import annotations

import dataclasses

from pipeline.episodes import (
    DEFAULT_SEED,
    HSNET_SEED,
    PATNET_EPISODES,
    default_episode_count,
    default_seed,
)


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One benchmark's protocol.

    Attributes
    ----------
    name : str
        Registry key (``pascal``, ``coco``, ``fss1000``, ``deepglobe``, ``isic``, ``chest``).
    dataset : str
        Reader in :data:`pipeline.datasets.DATASETS` (and the cache key).
    eval_split : str
        Mask-store split the test episodes index (``val`` for PASCAL and COCO, ``test``
        for the others).
    train_split : str or None
        Split of the training lists; None for the evaluation-only cross-domain sets.
    folds : tuple of int
        Folds reported (4 for PASCAL-5i / COCO-20i, one fixed split otherwise).
    protocol : str
        Episode protocol (:data:`pipeline.episodes.PROTOCOLS`).
    episodes : int or None
        Episodes per fold and shot; None = every test image once (FSS-1000: 2,400).
    seed : int
        Test seed of the reference (321 PFENet / QGNet, 0 HSNet / PATNet).
    image_size : int or None
        Square side both query and support are resized to before the network (HSNet /
        PATNet: 400); None = the checkpoint's crop with PFENet's ``Resize``.
    scoring : str
        Default scoring of the evaluator: ``pfenet`` (logits to the original label, PFENet's
        way) or ``hsnet`` (at ``image_size`` x ``image_size``).
    where : str
        Where to get the data (docs/data.md has the layouts).
    reference : str
        The code whose protocol this is.
    """

    name: str
    dataset: str
    eval_split: str
    train_split: str | None
    folds: tuple[int, ...]
    protocol: str
    episodes: int | None
    seed: int
    image_size: int | None
    scoring: str
    where: str
    reference: str
    shots: tuple[int, ...] = (1, 5)


_PATNET = "slei109/PATNet test.py, data/{}.py (num=600, fix_randseed(0), 400 x 400)"

BENCHMARKS: dict[str, Benchmark] = {
    "pascal": Benchmark(
        "pascal", "pascal", "val", "train", (0, 1, 2, 3), "pfenet",
        default_episode_count("pascal"), DEFAULT_SEED, None, "pfenet",
        "VOC2012 trainval + SBD (docs/data.md, PASCAL-5i)",
        "PFENet test.py / QGNet train.py (1,000 episodes, seed 321, original labels)"),
    "coco": Benchmark(
        "coco", "coco", "val", "train", (0, 1, 2, 3), "pfenet",
        default_episode_count("coco"), DEFAULT_SEED, None, "pfenet",
        "https://cocodataset.org/#download (2014 or 2017 train/val + annotations)",
        "PFENet test.py (20,000 episodes, seed 321, COCO-20i interleaved)"),
    "fss1000": Benchmark(
        "fss1000", "fss1000", "test", "train", (0,), "hsnet", None, HSNET_SEED, 400, "hsnet",
        "https://github.com/HKUSTCV/FSS-1000 (fewshot_data.zip)",
        "juhongm999/hsnet test.py, data/fss.py (every test image once, seed 0, 400 x 400); "
        "PATNet uses the same reader"),
    "deepglobe": Benchmark(
        "deepglobe", "deepglobe", "test", None, (0,), "patnet", PATNET_EPISODES, HSNET_SEED,
        400, "hsnet", "PATNet's preprocessed Deepglobe (slei109/PATNet README.md)",
        _PATNET.format("deepglobe")),
    "isic": Benchmark(
        "isic", "isic", "test", None, (0,), "patnet", PATNET_EPISODES, HSNET_SEED, 400,
        "hsnet", "https://challenge.isic-archive.com/data/#2018 (task 1) + PATNet "
        "data/isic/class_id.csv", _PATNET.format("isic")),
    "chest": Benchmark(
        "chest", "chest", "test", None, (0,), "patnet", PATNET_EPISODES, HSNET_SEED, 400,
        "hsnet", "https://www.kaggle.com/datasets/nikhilpandey360/chest-xray-masks-and-labels",
        _PATNET.format("lung")),
}


def benchmark_for(dataset: str) -> Benchmark:
    """The registry entry of ``dataset``, or PFENet's protocol on its ``val`` split for any
    other dataset (folder, demo, coco-json, a user-named one): 4 interleaved folds (or its
    ``folds.txt``), 1,000 episodes, seed 321."""
    if dataset in BENCHMARKS:
        return BENCHMARKS[dataset]
    return Benchmark(dataset, dataset, "val", "train", (0, 1, 2, 3), "pfenet",
                     default_episode_count(dataset), DEFAULT_SEED, None, "pfenet",
                     "your own data (docs/data.md)", "PFENet test.py")


def eval_split(dataset: str) -> str:
    """Mask-store split the test episodes of ``dataset`` index (``val`` unless the registry
    says otherwise)."""
    return benchmark_for(dataset).eval_split


@dataclasses.dataclass(frozen=True)
class EvalProtocol:
    """How one dataset is evaluated (:func:`eval_protocol`): each field given by the caller
    or, unset, the benchmark's.

    Attributes
    ----------
    benchmark : Benchmark
        The registry entry (:func:`benchmark_for`).
    protocol : str
        Episode protocol: which episode files are read.
    scoring : str
        How predictions are scored (``model.fss.metrics.SCORINGS``).
    seeds : tuple of int
        Episode seeds.
    image_size : int or None
        HSNet's square side for the ``hsnet*`` scorings (None: the evaluator's 400).
    given : tuple of str
        The fields the caller set; the others are the benchmark's.
    """

    benchmark: Benchmark
    protocol: str
    scoring: str
    seeds: tuple[int, ...]
    image_size: int | None
    given: tuple[str, ...]


def eval_protocol(dataset: str, *, protocol: str | None = None, scoring: str | None = None,
                  seeds=None, image_size: int | None = None) -> EvalProtocol:
    """The evaluation of ``dataset``: what the caller gives, the benchmark's for what it leaves
    ``None``. The one place ``qgnet-eval fss`` and ``qgnet-eval bench`` take their defaults,
    so each dataset is scored like its literature without flags.

    ``protocol``: the benchmark's (pfenet; hsnet for FSS-1000; patnet for the cross-domain
    sets). ``scoring``: the benchmark's (pfenet; hsnet for FSS-1000 and the cross-domain
    sets), whatever the protocol. ``seeds``: the benchmark's seed when the protocol is its
    own, else that protocol's test seed (321 pfenet, 0 hsnet / patnet). ``image_size``: the
    benchmark's square side for the ``hsnet`` scorings.

    >>> p = eval_protocol("fss1000")
    >>> p.protocol, p.scoring, p.seeds, p.image_size
    ('hsnet', 'hsnet', (0,), 400)
    >>> eval_protocol("fss1000", scoring="pfenet").image_size is None
    True
    >>> eval_protocol("demo", protocol="hsnet").seeds, eval_protocol("demo").scoring
    ((0,), 'pfenet')
    """
    b = benchmark_for(dataset)
    given = tuple(k for k, v in (("protocol", protocol), ("scoring", scoring),
                                 ("seeds", seeds or None), ("image_size", image_size))
                  if v is not None)
    protocol = protocol or b.protocol
    scoring = scoring or b.scoring
    if seeds:
        seed_list = tuple(int(s) for s in seeds)
    else:
        seed_list = (b.seed,) if protocol == b.protocol else (default_seed(protocol),)
    if scoring.startswith("hsnet"):
        size = int(image_size) if image_size is not None else b.image_size
    else:
        size = None
    return EvalProtocol(b, protocol, scoring, seed_list, size, given)
