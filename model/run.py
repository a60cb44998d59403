"""One training run: the skeleton both trainers share (STYLE.md lesson 13).

A trainer (``model/fss/trainer.py``, ``model/prior/trainer.py``) keeps its recipe, its data
and its step; everything every run does around them is here, in the order a run does it::

    with Run("fss", device=cfg.device, log=log) as run:   # DDP, the device (ConfigError if absent)
        cfg = finalize_config(cfg, world=run.world)
        config = config_dict(cfg)                          # the plain dict checkpoints record
        run_dir, ckpt = run.locate(config, cls=FssConfig, kind="fss", resumable=RESUMABLE)
        ... the trainer checks its data: nothing is written before this line ...
        run.open(run_dir, config, resumed=ckpt, kind="fss")  # lock, refusal, run dir,
                                     # temporaries, metrics.jsonl (cut back on resume),
                                     # train.log, TensorBoard events
        net = run.wrap(model)        # DDP (``model`` is the module, ``net`` what steps)
        for each step: out = step(net, batch); window.add(**out); run.tick()
            at log steps: rec = run.window_means(window, ...)  # over ranks; non-finite -> error
                          run.record(**rec); run.show(...)
            if saver.due(step, epoch_end=...): run.save(saver, state, step=step)

The run dir
-----------
Whatever path is resumed is the one written: ``--resume B`` continues in ``B`` even when
the checkpoint was written in ``A`` (a copied or moved run dir never writes into, or
recreates, its original). Without ``--resume`` a run dir that holds a checkpoint is refused.
One process writes a run dir: rank 0 holds :class:`pipeline.store.StoreLock` on it
(``<run dir>.lock``) from before the refusal check to the end; a second run on the same dir
is refused naming the first's pid and host, and the lock of a dead run is taken over with a
message.

The resume rule
---------------
A resumed run's config is the checkpoint's, then the TOML file, the environment and the
command line (:func:`run_config`, :func:`pipeline.settings.resolve_config`); an option that
changes the run (anything outside :data:`RESUMABLE_COMMON` and the trainer's additions) must
equal the checkpoint's value, whatever its source.
"""
from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

DEVICES = ("auto", "cpu", "cuda")

# options that may differ between a run and its resumption in both trainers (they do not
# change what is computed); each trainer's config adds its own (docs/checkpoints.md)
RESUMABLE_COMMON = frozenset({"resume", "out", "max_steps", "device", "workers", "log_every",
                              "ckpt_every", "progress", "cache_dir", "root"})


def run_dir_of(where: str | os.PathLike, *, kind: str) -> Path:
    """The run dir a ``--resume`` path names: a folder as given; a checkpoint file's folder
    (a prior ``checkpoints/step-*.pt``: the folder above ``checkpoints/``)."""
    p = Path(where)
    if p.is_dir():
        return p
    if kind == "prior" and p.parent.name == "checkpoints":
        return p.parent.parent
    return p.parent


def run_config(cls, *, cli: Mapping[str, Any], config_file, section: str, kind: str,
               resumable: Iterable[str], reset: Mapping[str, Any]):
    """The config of ``qgnet-train <kind>``: defaults < TOML < ``QGNET_*`` < flags; with
    ``resume`` (from any of them) the checkpoint's config replaces the defaults, ``reset``
    values are not inherited, and every given option must be resumable or equal the
    checkpoint's (:func:`pipeline.settings.resolve_config`). A bare prior ``--resume``
    (``"auto"``) resumes ``--out``."""
    from model.checkpoint import find_checkpoint, load_checkpoint
    from pipeline.errors import ConfigError
    from pipeline.settings import given_values, resolve_config

    given = given_values(cls, cli=cli, config_file=config_file, section=section)
    resume = given.get("resume", (None, ""))[0]
    if resume is None:
        return resolve_config(cls, cli=cli, config_file=config_file, section=section)
    where = resume
    if resume == "auto":
        where = given.get("out", (None, ""))[0]
        if where is None:
            raise ConfigError("bare --resume needs --out RUN_DIR (or --resume PATH)")
    saved = load_checkpoint(find_checkpoint(where, kind=kind), kind=kind)["config"]
    return resolve_config(cls, cli=cli, config_file=config_file, section=section,
                          base={**saved, **reset}, resumable=resumable)


class Run:
    """The skeleton of one training run (see the module docstring); a context manager that
    releases the run dir's lock, the progress bar and the event file on exit."""

    def __init__(self, name: str, *, device: str, log: logging.Logger, progress: bool = True):
        from model.speed import configure_cuda
        from model.utils import init_distributed, pick_device

        self.name, self.log, self.show_progress = name, log, progress
        self.dist = init_distributed(device)
        self.device = pick_device(device)  # ConfigError when the device does not exist here
        configure_cuda(self.device)  # cudnn.benchmark + TF32 matmuls, CUDA only (model.speed)
        self.dir: Path | None = None
        self.config: dict[str, Any] = {}
        self.bar = None
        self._lock = None
        self._events = None
        self._metrics = None

    # ------------------------------------------------------------------ ranks
    @property
    def main(self) -> bool:
        return self.dist.main

    @property
    def world(self) -> int:
        return self.dist.world_size

    @property
    def rank(self) -> int:
        return self.dist.rank

    def agree(self, error: BaseException | None) -> None:
        """Raise rank 0's ``error`` on every rank (a refusal decided by rank 0 alone left the
        other ranks waiting in the next collective until the NCCL timeout)."""
        if self.dist.enabled:
            import torch.distributed as dist

            from pipeline.errors import ConfigError, StoreError

            box = [None if error is None else (type(error).__name__, str(error))]
            dist.broadcast_object_list(box, src=0)
            if box[0] is not None and error is None:
                kind, msg = box[0]
                types = {"FileExistsError": FileExistsError, "ConfigError": ConfigError,
                         "StoreError": StoreError, "FileNotFoundError": FileNotFoundError}
                error = types.get(kind, RuntimeError)(msg)
        if error is not None:
            raise error

    def sum(self, values: list[float]) -> list[float]:
        """``values`` summed over ranks (float64 on the training device; as given alone)."""
        if not self.dist.enabled:
            return values
        import torch

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.cpu().tolist()

    def wrap(self, model, **ddp_options):
        """``net``: the module that steps (DistributedDataParallel under torchrun, else
        ``model`` itself). ``model`` stays the plain module (saved, evaluated)."""
        if not self.dist.enabled:
            return model
        import torch

        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            **ddp_options)

    # ------------------------------------------------------------------ run dir
    def locate(self, config: Mapping[str, Any], *, cls, kind: str, resumable: Iterable[str],
               other_out: bool = False) -> tuple[Path, dict[str, Any] | None]:
        """The run dir and the checkpoint to resume (None for a new run) of the resolved
        ``config`` (a plain dict of ``cls``).

        ``resume`` (a run dir, a checkpoint, or ``"auto"``: ``out``) names the run dir: the
        resumed run writes there, wherever the checkpoint was written. ``out`` naming another
        folder is refused (``other_out``: allowed, e.g. the prior's --export-only target).
        The checkpoint's config must agree with ``config`` (the resume rule; configs saved
        with the old "unset" spellings are read by :func:`pipeline.settings.read_saved`)."""
        from model.checkpoint import find_checkpoint, load_checkpoint
        from pipeline.errors import ConfigError
        from pipeline.settings import check_resume, read_saved

        out, resume = config["out"], config["resume"]
        if resume is None:
            return Path(out), None
        where = out if resume == "auto" else resume
        if where is None:
            raise ConfigError("bare --resume needs --out RUN_DIR (or --resume PATH)")
        path = find_checkpoint(where, kind=kind)
        run_dir = run_dir_of(where, kind=kind)
        if out is not None and not other_out and Path(out).resolve() != run_dir.resolve():
            raise ConfigError(f"--resume {resume} continues the run in {run_dir}, but --out "
                              f"names {out}; leave --out out (a resumed run writes where it "
                              f"is resumed), or copy the run dir there and resume the copy")
        ckpt = load_checkpoint(path, kind=kind)
        ckpt["path"] = str(path)
        check_resume(read_saved(cls, ckpt["config"]), config, resumable=resumable)
        return run_dir, ckpt

    def open(self, run_dir: str | os.PathLike, config: Mapping[str, Any], *,
             resumed: Mapping[str, Any] | None, kind: str, folders: Iterable[str] = ()) -> Path:
        """Take the run dir (rank 0: lock, refusal of an occupied dir without --resume, create
        it, delete the temporaries of killed processes in it and its ``folders``, cut
        metrics.jsonl back to the checkpoint's step); then, on every rank, train.log, the
        metrics writer, TensorBoard events (when ``tensorboard`` is installed) and the config
        that :meth:`save` puts into checkpoints (``config`` with ``out`` = the run dir)."""
        from model.checkpoint import find_checkpoint, truncate_metrics
        from model.utils import MetricsWriter, attach_file_log
        from pipeline.fileio import remove_stale_temporaries
        from pipeline.store import StoreLock

        run_dir = Path(run_dir)
        error = None
        if self.main:
            try:
                self._lock = StoreLock(run_dir, what="run dir", echo=self._warn).__enter__()
                if resumed is None:
                    try:
                        found = find_checkpoint(run_dir, kind=kind)
                    except FileNotFoundError:
                        found = None
                    if found is not None:
                        raise FileExistsError(f"{run_dir} already holds a run ({found.name}); "
                                              f"pass --resume {run_dir} to continue it, or --out "
                                              f"NEW_DIR for a new one")
                run_dir.mkdir(parents=True, exist_ok=True)
                remove_stale_temporaries(run_dir, *(run_dir / f for f in folders))
                if resumed is not None:  # the replayed steps must not appear twice in the curve
                    truncate_metrics(run_dir / "metrics.jsonl", int(resumed["step"]))
            except BaseException as exc:  # noqa: BLE001 - raised below, on every rank
                self._release()
                error = exc
        self.agree(error)
        self.dir, self.config = run_dir, {**config, "out": str(run_dir)}
        attach_file_log(self.log, run_dir / "train.log", enabled=self.main)
        if self._lock is not None and self._lock.took_over:
            self.log.warning("took over the stale lock of %s on %s", self._lock.took_over, run_dir)
        self._metrics = MetricsWriter(run_dir / "metrics.jsonl", enabled=self.main)
        self._events = event_writer(run_dir) if self.main else None
        return run_dir

    def write_config(self, extra: Mapping[str, Any]) -> None:
        """``config.json``: the resolved config plus ``extra`` (rank 0, atomic)."""
        from pipeline.fileio import write_json_atomic

        if self.main:
            write_json_atomic(self.dir / "config.json", {**self.config, **extra})

    # ------------------------------------------------------------------ progress and logs
    def progress(self, *, total: int, initial: int) -> None:
        """A tqdm bar on rank 0 (``progress``), advanced by :meth:`tick`."""
        if self.show_progress and self.main:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=self.name, unit="step",
                            dynamic_ncols=True)

    def tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def window_means(self, window, *, step: int, hint: str) -> dict[str, float]:
        """The window's means over every rank (its ``sums`` keys summed over steps and
        ranks: the one host read of the window); a non-finite loss stops the run with
        ``hint``."""
        first = step - len(window) + 1

        def over_ranks(keys: list[str], vals: list[float]) -> list[float]:
            if not self.dist.enabled:
                return vals
            total = self.sum(vals)
            return [v if k in window.sums else v / self.world
                    for k, v in zip(keys, total, strict=True)]

        rec = window.pop(reduce=over_ranks)
        if not math.isfinite(rec.get("loss", 0.0)):  # one non-finite step makes the mean so
            raise FloatingPointError(f"loss is {rec['loss']} in steps {first}-{step}; {hint}")
        return rec

    def record(self, **rec: Any) -> None:
        """One line of metrics.jsonl, and its numbers as TensorBoard scalars."""
        self._metrics.write(**rec)
        if self._events is not None:
            tag = rec.get("kind", "train")
            for k, v in rec.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                    self._events.add_scalar(f"{tag}/{k}", v, rec["step"])
            self._events.flush()

    def show(self, postfix: Mapping[str, str], line: str, *args: Any) -> None:
        """The progress bar's postfix and one train.log line (rank 0)."""
        if self.bar is not None:
            self.bar.set_postfix(**postfix)
        if self.main:
            self.log.info(line, *args)

    # ------------------------------------------------------------------ checkpoints
    def gather_rng(self) -> list[Any]:
        """Every rank's RNG state (its own CUDA device only), in rank order."""
        from model.checkpoint import rng_state

        state = rng_state(self.device)
        if not self.dist.enabled:
            return [state]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, state)
        return out

    def restore_rng(self, ckpt: Mapping[str, Any]) -> None:
        """This rank's RNG state from a checkpoint (a run on more ranks reuses rank 0's)."""
        from model.checkpoint import pick_rank_state, set_rng_state

        set_rng_state(pick_rank_state(ckpt["rng"], self.rank), self.device)

    def save(self, saver, state: Mapping[str, Any], *, step: int,
             name: str | None = None) -> Path | None:
        """Collective: gather the RNG states, then rank 0 writes ``state`` plus ``step``,
        ``rng``, ``config`` and ``provenance`` through ``saver`` (its cadence and naming)."""
        from pipeline.provenance import provenance

        rng = self.gather_rng()
        if not self.main:
            return None
        return saver.save({**state, "step": step, "rng": rng, "config": self.config,
                           "provenance": provenance(self.config)}, step, name=name)

    # ------------------------------------------------------------------ end
    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self._events is not None:
            self._events.close()
            self._events = None
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.__exit__(None, None, None)
            self._lock = None

    def _warn(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr)


def event_writer(run_dir: Path):
    """TensorBoard's ``SummaryWriter`` on ``run_dir`` when ``tensorboard`` is installed (the
    optional extra ``pip install qgnet[tensorboard]``), else None: the run goes on without."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(run_dir))

