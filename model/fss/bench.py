"""One checkpoint on every benchmark whose data is present: ``qgnet-eval bench``.

::

    checkpoint  -> its dataset, fold, crop, precision (the network loaded once)
    --benchmarks   pascal, coco, fss1000, deepglobe, isic, chest (pipeline.benchmarks),
                   or any dataset in the cache (a folder dataset: PFENet's protocol)
      present?     a complete test mask store in the cache, else listed with where to get
                   the data and the commands that prepare it (not a failure)
      episodes     each benchmark's protocol, episode count and seed(s); a missing file is
                   made from the mask store (pipeline.episode_stage.ensure_test_episodes)
      fold         the checkpoint's own dataset at its own fold; any other at fold 0
                   (cross-domain: no fine-tuning)
      scoring      the benchmark's published one (pfenet; hsnet for FSS-1000 and the
                   cross-domain sets), or --scoring for every row
    rows        benchmark x shot: model.fss.evaluate.evaluate on the loaded network, the
                numbers ``qgnet-eval fss`` gives for the same checkpoint, episodes, scoring
    bench.json / bench.md   in --out (default: next to the checkpoint), rewritten
                atomically after every row

Resumable: each row keeps the inputs that made it (the checkpoint's content hash, the
episode file's content, the mask store it indexes, the scoring and its input size, the
episode cap, the precision); a run started again reuses the rows whose inputs are unchanged
and redoes the others. One bench run per output folder at a time (``bench.json.lock``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from model.run import DEVICES
from pipeline.settings import option

# the scorings of model.fss.metrics.SCORINGS, named here without importing torch (the
# options of `qgnet-eval bench`, `fss` and `compare` are built from it at import; --help
# stays cheap)
SCORING_CHOICES = ("pfenet", "exact", "hsnet", "hsnet-original")
BENCH_JSON, BENCH_MD = "bench.json", "bench.md"
FORMAT = 1  # bench.json layout


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """Every option of ``qgnet-eval bench``, resolved by :func:`pipeline.settings.resolve_config`
    (defaults < TOML ``--config`` (top level or ``[bench]``) < ``QGNET_*`` < command line).
    ``None`` is "not set": the checkpoint's, or each benchmark's."""

    checkpoint: str | None = option(
        None, help="best.pt / last.pt of `qgnet-train fss`. Required.")
    benchmarks: tuple[str, ...] | None = option(
        None, help="Comma-separated: pascal, coco, fss1000, deepglobe, isic, chest, or any "
                   "dataset in the cache (a folder dataset, demo, camvid...). Default: the "
                   "checkpoint's dataset, then every one of the registry.")
    shots: tuple[int, ...] | None = option(
        None, min=1, flag="--shot", help="Shots, comma-separated (default: each benchmark's, 1,5).")
    scoring: str | None = option(
        None, choices=SCORING_CHOICES,
        help="Score every row this way (default: each benchmark's published scoring: pfenet "
             "for PASCAL, COCO and folder datasets, with exact from the same pass; hsnet for "
             "fss1000, deepglobe, isic, chest).")
    n_episodes: int | None = option(
        None, min=1, flag="--episodes",
        help="Cap: the first N episodes of each file, for quick runs (the table says the "
             "rows are capped; default: every episode).")
    cache_dir: str | None = option(None, folder=True, help="Cache root (default: the checkpoint's).")
    device: str = option("auto", choices=DEVICES, help="Device (default auto).")
    amp: bool | None = option(
        None, help="bf16 autocast on CUDA (default: the precision the checkpoint was trained "
                   "in; fp32 on CPU).")
    workers: int = option(2, min=0, help="DataLoader workers (default 2).")
    threads: int | None = option(None, min=1, help="torch CPU threads (default: torch's).")
    batch_size: int | None = option(
        None, min=1, help="Episodes per forward (default 4 on CUDA, 1 on CPU; the scores do "
                          "not depend on it).")
    out: str | None = option(
        None, folder=True, help="Folder of bench.md and bench.json (default: next to the "
                                "checkpoint).")
    progress: bool = option(True, help="tqdm progress bar per row (default on).")


# ------------------------------------------------------------------------------ identities
def file_sha256(path: str | Path, *, block: int = 1 << 22) -> str:
    """sha256 of a file's bytes (a checkpoint copied elsewhere keeps its identity)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def episodes_sha256(ep: Mapping[str, Any]) -> str:
    """sha256 of what an episode file holds (its arrays, split and store ids), not of the
    ``.npz`` bytes: the same episodes written again hash the same."""
    import numpy as np

    h = hashlib.sha256()
    for key in ("query", "support", "cls", "test_classes"):
        a = np.ascontiguousarray(np.asarray(ep[key]).astype(np.int64))
        h.update(f"{key}{a.shape}".encode())
        h.update(a.tobytes())
    for key in ("split", "ids_hash", "protocol", "seed", "fold", "shot"):
        h.update(f"{key}={ep.get(key)!r};".encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------ planning
@dataclasses.dataclass
class _Row:
    """One benchmark x shot to score, with the inputs that decide whether a stored row is
    still valid."""

    key: str
    benchmark: str
    fold: int
    own: bool
    shot: int
    root: str | None
    plan: Any                     # pipeline.benchmarks.EvalProtocol
    episodes: list                # loaded episode files, one per seed
    inputs: dict[str, Any]


def row_key(benchmark: str, shot: int) -> str:
    return f"{benchmark}-{shot}shot"


def _where(benchmark: str, eval_split: str, cache_dir) -> dict[str, Any]:
    """Where to get an absent benchmark and the commands that prepare it."""
    from pipeline.benchmarks import benchmark_for
    from pipeline.settings import format_command

    b = benchmark_for(benchmark)
    cache = str(cache_dir) if cache_dir else None
    return {"where": b.where, "commands": [
        format_command("qgnet-prep", "masks", dataset=benchmark, root="DIR", split=eval_split,
                       cache_dir=cache),
        format_command("qgnet-prep", "episodes", dataset=benchmark, cache_dir=cache)]}


def select_benchmarks(names: Sequence[str] | None, *, own: str, cache_dir) -> list[str]:
    """The benchmarks to run, in order, each once: ``names``, or the checkpoint's dataset and
    then the registry. A name that is neither in the registry, the checkpoint's dataset nor a
    folder of the cache is a :class:`ConfigError` (a typo, not an absent benchmark)."""
    import difflib

    from pipeline.benchmarks import BENCHMARKS
    from pipeline.cache import cache_root, dataset_cache_dir, validate_dataset_name
    from pipeline.errors import ConfigError

    chosen = list(names) if names else [own, *BENCHMARKS]
    out: list[str] = []
    for name in chosen:
        name = validate_dataset_name(str(name).strip(), option="--benchmarks")
        if name in out:
            continue
        if name not in BENCHMARKS and name != own and not dataset_cache_dir(
                name, cache_dir=cache_dir).is_dir():
            known = sorted({*BENCHMARKS, own} | {p.name for p in cache_root(cache_dir).glob("*")
                                                  if p.is_dir()})
            close = difflib.get_close_matches(name, known, n=1)
            raise ConfigError(f"--benchmarks: unknown benchmark {name!r}: not in the registry "
                              f"({', '.join(BENCHMARKS)}), not the checkpoint's dataset and no "
                              f"folder {dataset_cache_dir(name, cache_dir=cache_dir)}"
                              + (f"; did you mean {close[0]!r}?" if close else ""))
        out.append(name)
    return out


def _plan(cfg: BenchConfig, *, names: Sequence[str], train: Mapping[str, Any], cache_dir,
          identity: Mapping[str, Any], echo) -> tuple[list[_Row], list[dict], list[dict]]:
    """Rows to score, absent benchmarks, rows that cannot be run (with the reason)."""
    from pipeline.benchmarks import benchmark_for, eval_protocol
    from pipeline.episode_stage import ensure_test_episodes
    from pipeline.errors import QgnetError
    from pipeline.mask_stage import locate_mask_store

    rows, absent, not_run = [], [], []
    for name in names:
        b = benchmark_for(name)
        own = name == train["dataset"]
        fold = int(train["fold"]) if own else 0
        try:
            store = locate_mask_store(name, b.eval_split, cache_dir=cache_dir)
        except QgnetError as exc:  # StoreError: absent (or incomplete / damaged)
            absent.append({"benchmark": name, "split": b.eval_split,
                           "reason": str(exc).splitlines()[0],
                           **_where(name, b.eval_split, cache_dir)})
            continue
        plan = eval_protocol(name, scoring=cfg.scoring)
        for shot in (cfg.shots or b.shots):
            key = row_key(name, int(shot))
            try:
                eps = [ensure_test_episodes(name, fold, int(shot), seed=s, protocol=plan.protocol,
                                            cache_dir=cache_dir, echo=echo)[0]
                       for s in plan.seeds]
            except QgnetError as exc:  # no episode can be drawn, a stale file, a bad fold
                not_run.append({"key": key, "benchmark": name, "shot": int(shot),
                                "reason": str(exc)})
                continue
            inputs = {
                "checkpoint_sha256": identity["sha256"], "dataset": name, "fold": fold,
                "shot": int(shot), "protocol": plan.protocol, "scoring": plan.scoring,
                "input_size": plan.image_size if plan.scoring.startswith("hsnet") else
                int(train["crop"]),
                "seeds": list(plan.seeds), "episode_cap": cfg.n_episodes,
                "precision": identity["precision"],
                "episode_files": [{"file": Path(str(e["path"])).name,
                                   "sha256": episodes_sha256(e)} for e in eps],
                # the store the episodes index, by what it is, not where (a copied or
                # relocated cache keeps its rows); its ids are in the episode file's hash
                "mask_store": {"split": b.eval_split, "created": store.attrs.get("created"),
                               "n": store.n},
            }
            rows.append(_Row(key, name, fold, own, int(shot),
                             train.get("root") if own else None, plan, eps, inputs))
    return rows, absent, not_run


# ------------------------------------------------------------------------------ running
def _row_result(row: _Row, res: Mapping[str, Any], cap: int | None) -> dict[str, Any]:
    """The table row of one :func:`model.fss.evaluate.evaluate` result."""
    from model.fss.metrics import SCORINGS
    from pipeline.episodes import default_episode_count

    in_file = [len(e["query"]) for e in row.episodes]
    scores = {name: {"miou": sc["miou"]["mean"], "fb_iou": sc["fb_iou"]["mean"],
                     "miou_std": sc["miou"]["std"], "fb_iou_std": sc["fb_iou"]["std"],
                     "miou_all_classes": sc["miou_all_classes"]["mean"],
                     "missing_classes": sc["missing_classes"], "label": SCORINGS[name][1]}
              for name, sc in res["scores"].items()}
    return {
        "benchmark": row.benchmark, "dataset": row.benchmark, "fold": row.fold,
        "cross_domain": not row.own, "shot": row.shot, "protocol": row.plan.protocol,
        "scoring": row.plan.scoring, "scoring_from": ("--scoring" if "scoring" in row.plan.given
                                                      else "benchmark"),
        "input_size": res["input_size"], "seeds": list(res["seeds"]),
        "episodes": list(res["episodes"]), "episodes_in_file": in_file,
        "protocol_episodes": default_episode_count(row.benchmark, row.plan.protocol),
        "capped": bool(cap is not None and any(cap < n for n in in_file)),
        "miou": scores[row.plan.scoring]["miou"], "fb_iou": scores[row.plan.scoring]["fb_iou"],
        "scores": scores, "episodes_per_s": res["episodes_per_s"],
        "seconds": round(sum(r["seconds"] for r in res["runs"]), 3),
        "device": res["device"], "batch_size": res["batch_size"],
        "precision": "bf16" if res["amp"] else "fp32",
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "inputs": row.inputs,
    }


def run_bench(cfg: BenchConfig, *, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Score one checkpoint on every selected benchmark that is present; write
    ``bench.json`` and ``bench.md`` (after every row); return the table (bench.json's
    content).

    Raises
    ------
    ConfigError
        An option out of range, an unknown benchmark name (before anything is written).
    CheckpointError
        The checkpoint is missing or not a ``qgnet-train fss`` checkpoint.
    StoreError
        Another bench run holds the output folder.
    """
    import torch

    from model.fss.build import load_model
    from model.fss.config import FssConfig
    from model.fss.evaluate import checkpoint_amp, evaluate
    from model.utils import pick_device
    from pipeline.errors import ConfigError, QgnetError
    from pipeline.fileio import remove_stale_temporaries, write_json_atomic, write_text_atomic
    from pipeline.provenance import provenance
    from pipeline.settings import check_config, config_dict, merge_unset, read_saved
    from pipeline.store import StoreLock

    check_config(cfg)
    if not cfg.checkpoint:
        raise ConfigError("--checkpoint is required (or QGNET_CHECKPOINT / checkpoint in --config)")
    ckpt_path = Path(cfg.checkpoint)
    dev = pick_device(cfg.device)  # ConfigError: CUDA asked for without a GPU
    model, ckpt = load_model(ckpt_path, device=dev)  # CheckpointError names the file
    train = merge_unset(read_saved(FssConfig, dict(ckpt.get("config", {}))), {"fold": 0, "shot": 1})
    if not train.get("dataset") or train.get("crop") is None:
        raise ConfigError(f"{ckpt_path} records no dataset or crop; it is not a qgnet-train fss "
                          f"checkpoint this command can score")
    cache_dir = cfg.cache_dir or train.get("cache_dir")
    names = select_benchmarks(cfg.benchmarks, own=str(train["dataset"]), cache_dir=cache_dir)
    amp = checkpoint_amp(ckpt) if cfg.amp is None else bool(cfg.amp)
    identity = {"path": str(ckpt_path), "sha256": file_sha256(ckpt_path),
                "precision": "bf16" if (amp and dev.type == "cuda") else "fp32"}
    out = Path(cfg.out) if cfg.out else ckpt_path.parent
    table: dict[str, Any] = {
        "format": FORMAT, "checkpoint": identity["path"], "checkpoint_sha256": identity["sha256"],
        "trained_on": {k: train.get(k) for k in ("dataset", "fold", "shot", "crop", "backbone",
                                                 "use_prior_map")},
        "device": str(dev), "precision": identity["precision"], "episode_cap": cfg.n_episodes,
        "benchmarks": names, "rows": [], "pending": [], "absent": [], "not_run": [],
        "config": config_dict(cfg), **provenance({"benchmarks": names})}
    out.mkdir(parents=True, exist_ok=True)
    with StoreLock(out / BENCH_JSON, what="bench table", echo=echo):
        remove_stale_temporaries(out)
        old = _read_rows(out / BENCH_JSON)
        rows, absent, not_run = _plan(cfg, names=names, train=train, cache_dir=cache_dir,
                                      identity=identity, echo=echo)
        table.update(absent=absent, not_run=not_run)
        done: dict[str, dict] = {}
        for row in rows:
            prev = old.get(row.key)
            if prev is not None and prev.get("inputs") == row.inputs:
                done[row.key] = prev
        todo = [r for r in rows if r.key not in done]
        if done:
            echo(f"reusing {len(done)} finished row(s) of {out / BENCH_JSON} "
                 f"({', '.join(done)}); scoring {len(todo)}")

        def write() -> None:
            table["rows"] = [done[r.key] for r in rows if r.key in done]
            table["pending"] = [r.key for r in rows if r.key not in done]
            write_json_atomic(out / BENCH_JSON, table)
            write_text_atomic(out / BENCH_MD, format_markdown(table) + "\n")

        write()
        for row in todo:
            echo(f"{row.key}: {row.benchmark} fold {row.fold}, {row.shot}-shot, "
                 f"{row.plan.protocol} episodes, seeds {list(row.plan.seeds)}, scoring "
                 f"{row.plan.scoring}")
            try:
                res = evaluate(model, row.episodes, dataset=row.benchmark, fold=row.fold,
                               shot=row.shot, protocol=row.plan.protocol,
                               scoring=row.plan.scoring, hsnet_size=row.plan.image_size,
                               n_episodes=cfg.n_episodes, root=row.root, cache_dir=cache_dir,
                               crop=int(train["crop"]), device=str(dev), amp=amp,
                               batch_size=cfg.batch_size, workers=cfg.workers,
                               progress=cfg.progress, write=False, per_episode=False)
            except QgnetError as exc:  # e.g. the images of a benchmark are gone: list it
                table["not_run"].append({"key": row.key, "benchmark": row.benchmark,
                                         "shot": row.shot, "reason": str(exc)})
                rows = [r for r in rows if r.key != row.key]
                write()
                continue
            done[row.key] = _row_result(row, res, cfg.n_episodes)
            write()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    table["written"] = [str(out / BENCH_JSON), str(out / BENCH_MD)]
    return table


def _read_rows(path: Path) -> dict[str, dict]:
    """Finished rows of an earlier run (key -> row); an unreadable file is started afresh."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return {}
    return {row_key(r["benchmark"], r["shot"]): r for r in data.get("rows", [])
            if isinstance(r, dict) and "benchmark" in r and "shot" in r}


# ------------------------------------------------------------------------------ the table
def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:.2f}"


def _episodes_cell(row: Mapping[str, Any]) -> str:
    n, in_file = max(row["episodes"]), max(row["episodes_in_file"])
    cell = f"{n:,}" if not row["capped"] else f"{n:,} of {in_file:,} (capped)"
    want = row.get("protocol_episodes")
    if want is not None and in_file != want:
        cell += f" (protocol: {want:,})"
    return cell


def format_markdown(table: Mapping[str, Any]) -> str:
    """bench.md: one row per benchmark x shot (the headline scoring's mIoU / FB-IoU, the other
    scoring of the same pass beside it), then the benchmarks not run and why."""
    t = table["trained_on"]
    lines = [f"# Benchmarks of `{table['checkpoint']}`", "",
             f"Checkpoint sha256 {table['checkpoint_sha256'][:12]}, trained on {t['dataset']} "
             f"fold {t['fold']}, {t['shot']}-shot, crop {t['crop']}, {t.get('backbone')}, "
             f"{'QGNet (prior region map)' if t.get('use_prior_map', True) else 'baseline (no prior map)'}. "
             f"Scored on {table['device']} in {table['precision']}; `{table['command']}`, "
             f"{table['created']}.", "",
             "Each benchmark with its own protocol, episode count, seed(s) and scoring "
             "(pipeline/benchmarks.py, docs/data.md); the checkpoint's own dataset at its own "
             "fold, any other at fold 0 (cross-domain, no fine-tuning). mIoU and FB-IoU in %.",
             "",
             "| benchmark | fold | shot | protocol | episodes | seed(s) | scoring | mIoU | FB-IoU "
             "| same pass | episodes/s |",
             "|---|---:|---:|---|---|---|---|---:|---:|---|---:|"]
    for r in table["rows"]:
        others = [f"{name} {_pct(sc['miou'])} / {_pct(sc['fb_iou'])}"
                  for name, sc in r["scores"].items() if name != r["scoring"]]
        kind = "cross-domain" if r["cross_domain"] else "own"
        lines.append(
            f"| {r['benchmark']} ({kind}) | {r['fold']} | {r['shot']} | {r['protocol']} | "
            f"{_episodes_cell(r)} | {', '.join(map(str, r['seeds']))} | {r['scoring']}"
            f"{'' if r['scoring_from'] == 'benchmark' else ' (--scoring)'} | "
            f"{_pct(r['miou'])} | {_pct(r['fb_iou'])} | {'; '.join(others) or '–'} | "
            f"{r['episodes_per_s']:.2f} |")
    if not table["rows"]:
        lines.append("| (no row: no benchmark's data is present) | | | | | | | | | | |")
    notes = []
    if any(r["capped"] for r in table["rows"]):
        notes.append(f"**Capped** with `--episodes {table['episode_cap']}`: the first "
                     f"{table['episode_cap']} episodes of each file, not the protocol's count; "
                     f"these rows are quick checks, not comparable with published tables.")
    if any(r.get("protocol_episodes") not in (None, max(r["episodes_in_file"]))
           for r in table["rows"]):
        notes.append("(protocol: N): the episode file holds another count than the "
                     "benchmark's protocol (it was made with `qgnet-prep episodes --episodes`).")
    labels = {name: sc["label"] for r in table["rows"] for name, sc in r["scores"].items()}
    for name, label in labels.items():
        notes.append(f"`{name}`: {label}.")
    missing = [(r["benchmark"], r["shot"], r["scores"][r["scoring"]]["missing_classes"])
               for r in table["rows"] if r["scores"][r["scoring"]]["missing_classes"]]
    for b, k, m in missing:
        notes.append(f"{b} {k}-shot: classes {m} drew no episode and are left out of its mIoU "
                     f"(docs/fss.md, \"Classes without an episode\").")
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    if table.get("pending"):
        lines += ["", f"**In progress**: {len(table['pending'])} row(s) to go "
                      f"({', '.join(table['pending'])}); a killed run resumes from here when the "
                      f"same command is run again."]
    if table.get("not_run"):
        lines += ["", "## Not run", "", "| benchmark | shot | why |", "|---|---:|---|"]
        for n in table["not_run"]:
            lines.append(f"| {n['benchmark']} | {n['shot']} | {n['reason']} |")
    if table.get("absent"):
        lines += ["", "## Absent (no test mask store in the cache)", "",
                  "| benchmark | where to get it | prepare it with |", "|---|---|---|"]
        for a in table["absent"]:
            cmds = "<br>".join(f"`{c}`" for c in a["commands"])
            lines.append(f"| {a['benchmark']} | {a['where']} | {cmds} |")
        lines += ["", "The episodes step is optional: `qgnet-eval bench` makes a missing episode "
                      "file from the mask store with the benchmark's protocol. Layouts and the "
                      "whole sequence per benchmark: docs/data.md, \"From download to table, per "
                      "benchmark\"."]
    return "\n".join(lines)
