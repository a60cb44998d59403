"""Fault injection: kill -9 a stage at random moments, resume it, compare with an unbroken run.

For each of ``qgnet-prep superpixels``, ``qgnet-prep masks`` (threads and processes
schedulers, alternating), ``qgnet-train prior`` and ``qgnet-train fss``, on the demo dataset
at toy size::

    reference run (uninterrupted, timed: T)
    per trial:  start the command; SIGKILL its process (not its group) once a random amount
                of work is done (0 .. n-1 shards written, 0 .. n-1 steps logged) plus a
                random delay of up to one unit's time (T / n); every descendant process must die by itself within 10 s
                (else: an orphan, killed by this script and counted); re-run the same command
                (training: with --resume) to completion; compare with the reference:
                  stores: every file byte-identical (except the group's command/created attrs)
                  training: the loss of every logged step identical to the reference
                and look for leftovers: *.tmp<pid>, *.creating, *.lock below the outputs.

Two more trials per trainer (issue 22 §1, §2), each once:

    copied run dir  train A to step 4; cp -r A B; resume A to step 6; resume B (``--resume B``,
                    no ``--out``) to step 5; mv B C; resume C to step 6. A must be
                    byte-identical after B's and C's runs, B must not be re-created, and the
                    losses of B and C must be the reference's.
    two writers     start a run in R; once it logged step 1, start a second run (another
                    ``--seed``) with ``--out R``. The second must be refused naming the first's
                    pid, the first must finish with the reference's losses.

Usage (issue 15 asks for 10 trials per stage, 40 in all)::

    python -m bench.fault_inject --trials 10 --train-trials 10 --work /tmp/qgnet-fault \
        --out bench/results/fault_inject.json

Prints one line per trial and a summary table (Markdown) for docs/benchmarks.md; the record
holds every trial and the printed report. Exit code 1 if any trial differs, leaves an orphan
or a temporary.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from bench.common import ROOT, add_out_argument, markdown_table, write_result

PROGS = {"qgnet-prep": "cli.prep", "qgnet-train": "cli.train"}
TEMP_RE = re.compile(r".*(\.tmp\d*|\.creating|\.lock)$")


def command(prog: str, *args) -> list[str]:
    """A console script run as ``python -c`` of its click group (no install needed)."""
    module = PROGS[prog]
    return [sys.executable, "-c", f"import sys; from {module} import main; "
            f"sys.argv[0] = {prog!r}; main()", *map(str, args)]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("OMP_NUM_THREADS", "1")
    return e


def run(cmd: list[str], *, log: Path) -> float:
    t0 = time.perf_counter()
    with log.open("a") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, env=env(), stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[3:])} failed ({proc.returncode}); see {log}")
    return time.perf_counter() - t0


def run_and_kill(cmd: list[str], *, progress, target: int, delay: float, log: Path,
                 timeout: float = 1800.0) -> dict:
    """Start ``cmd``; once ``progress()`` reaches ``target`` units (shards written, steps
    logged) wait ``delay`` seconds more and SIGKILL its process (not its group). Kill moments
    in units of work, not seconds, land in every phase however loaded the machine is."""
    with log.open("a") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=fh, stderr=subprocess.STDOUT)
    me = psutil.Process(proc.pid)
    seen: dict[int, psutil.Process] = {}
    t0 = time.perf_counter()
    fire_at = None
    while proc.poll() is None and time.perf_counter() - t0 < timeout:
        try:
            for c in me.children(recursive=True):
                seen.setdefault(c.pid, c)
        except psutil.NoSuchProcess:
            break
        now = time.perf_counter()
        if fire_at is None and progress() >= target:
            fire_at = now + delay
        if fire_at is not None and now >= fire_at:
            break
        time.sleep(0.02)
    killed = proc.poll() is None
    done_at_kill = progress()
    if killed:
        try:
            for c in me.children(recursive=True):
                seen.setdefault(c.pid, c)
        except psutil.NoSuchProcess:
            pass
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(list(seen.values()), timeout=10)
    orphans = [p.pid for p in alive]
    for p in alive:  # our own children: do not leave them running
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return {"killed": killed, "at_s": round(time.perf_counter() - t0, 1), "target": target,
            "progress_at_kill": done_at_kill, "children": len(seen), "orphans": orphans}


def shards_done(store: Path) -> int:
    """Shards marked done (zarr writes the chunk file ``done/c/<k>`` when ``done[k]`` is set)."""
    d = store / "done" / "c"
    return len(list(d.iterdir())) if d.is_dir() else 0


def steps_logged(run_dir: Path) -> int:
    steps = losses(run_dir)
    return max(steps) if steps else 0


# ------------------------------------------------------------------------------ comparisons
def store_files(path: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted(path.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name == "zarr.json" and p.parent == path:
                j = json.loads(data)
                for k in ("command", "created"):
                    j["attributes"].pop(k, None)
                data = json.dumps(j, sort_keys=True).encode()
            out[str(p.relative_to(path))] = data
    return out


def same_store(a: Path, b: Path) -> str:
    fa, fb = store_files(a), store_files(b)
    if sorted(fa) != sorted(fb):
        return f"files differ: {sorted(set(fa) ^ set(fb))[:4]}"
    bad = [k for k in fa if fa[k] != fb[k]]
    return f"bytes differ: {bad[:4]}" if bad else ""


def losses(run_dir: Path) -> dict[int, float]:
    """step -> loss of every training line of metrics.jsonl (the last one wins for a step
    written twice, i.e. replayed after a resume)."""
    out = {}
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by the kill
        if "loss" in rec and "step" in rec:
            out[int(rec["step"])] = rec["loss"]
    return out


def same_losses(ref: Path, got: Path) -> str:
    a, b = losses(ref), losses(got)
    if not a:
        return "reference has no losses"
    if sorted(a) != sorted(b):
        return f"steps differ: ref {sorted(a)[:3]}..{sorted(a)[-1]}, got {sorted(b)[:3]}.."
    bad = [s for s in a if a[s] != b[s]]
    return f"losses differ at steps {bad[:5]}" if bad else ""


def temporaries(*folders: Path) -> list[str]:
    out = []
    for folder in folders:
        if folder.exists():
            out += [str(p) for p in folder.rglob("*") if TEMP_RE.fullmatch(p.name)]
    return out


# ------------------------------------------------------------------------------ the stages
class Stage:
    """One command under test: ``cmd(out, resume, scheduler)``, its comparison, its outputs."""

    def __init__(self, name, cmd, compare, progress, schedulers=(None,)):
        self.name, self.cmd, self.compare, self.schedulers = name, cmd, compare, schedulers
        self.progress = progress  # out -> units of work done (shards, steps)


def stages(work: Path, args) -> dict[str, Stage]:
    cache = work / "cache"
    prep = ["--dataset", "demo", "--cache-dir", cache, "--no-progress", "--shard-size", 4]

    def superpixels(out, resume, scheduler):
        return command("qgnet-prep", "superpixels", *prep, "--method", "slic", "--split",
                       "train", "--workers", 2, "--scheduler", scheduler or "threads",
                       "--out", out / "sp.zarr")

    def masks(out, resume, scheduler):
        return command("qgnet-prep", "masks", *prep, "--split", "train", "--workers", 2,
                       "--scheduler", scheduler or "threads", "--out", out / "masks.zarr")

    def prior(out, resume, scheduler):
        return train_command("prior", cache, args.train_steps, out=out / "prior",
                             resume=(out / "prior") if resume else None)

    def fss(out, resume, scheduler):
        return train_command("fss", cache, args.train_steps, out=out / "fss",
                             resume=(out / "fss") if resume else None)

    return {
        "superpixels": Stage("superpixels", superpixels,
                             lambda ref, out: same_store(ref / "sp.zarr", out / "sp.zarr"),
                             lambda out: shards_done(out / "sp.zarr"), ("threads", "processes")),
        "masks": Stage("masks", masks,
                       lambda ref, out: same_store(ref / "masks.zarr", out / "masks.zarr"),
                       lambda out: shards_done(out / "masks.zarr"), ("threads", "processes")),
        "prior": Stage("prior", prior, lambda ref, out: same_losses(ref / "prior", out / "prior"),
                       lambda out: steps_logged(out / "prior")),
        "fss": Stage("fss", fss, lambda ref, out: same_losses(ref / "fss", out / "fss"),
                     lambda out: steps_logged(out / "fss")),
    }


def train_command(name: str, cache: Path, max_steps: int, *, out: Path | None = None,
                  resume: Path | None = None, seed: int | None = None) -> list[str]:
    """``qgnet-train prior|fss`` at toy size; ``out`` and ``resume`` only where given (the
    issue's ``--resume B`` alone must write into B)."""
    where = [*(["--out", out] if out is not None else []),
             *(["--resume", resume] if resume is not None else []),
             *(["--seed", seed] if seed is not None else [])]
    if name == "prior":
        return command("qgnet-train", "prior", "--dataset", "demo", "--cache-dir", cache,
                       "--patches", "slic", "--backbone", "efficientnet_lite0", "--init", "none",
                       "--crop", 64, "--min-patch-pixels", 16, "--batch-size", 8,
                       "--queue-size", 32, "--local-queue-size", 128, "--epochs", 50,
                       "--max-steps", max_steps, "--workers", 0, "--ckpt-every", 2,
                       "--log-every", 1, "--device", "cpu", "--no-progress", *where)
    return command("qgnet-train", "fss", "--dataset", "demo", "--cache-dir", cache,
                   "--fold", 0, "--shot", 1, "--backbone", "efficientnet_lite0",
                   "--weights", "none", "--no-prior-map", "--crop", 65, "--batch-size", 4,
                   "--epochs", 50, "--max-steps", max_steps, "--val-episodes", 0,
                   "--workers", 0, "--threads", 1, "--ckpt-every", 2, "--log-every", 1,
                   "--device", "cpu", "--no-progress", *where)


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def prefix_losses(ref: Path, got: Path, upto: int, *, logged: int | None = None) -> str:
    """"" if ``got`` logged exactly steps 1..logged (default ``upto``) and its steps 1..upto
    have the reference's losses."""
    logged = upto if logged is None else logged
    a = {k: v for k, v in losses(ref).items() if k <= upto}
    b = losses(got)
    if sorted(b) != list(range(1, logged + 1)) or sorted(a) != list(range(1, upto + 1)):
        return f"{got.name}: steps {sorted(b)[:3]}..{sorted(b)[-1:] or ''}, expected 1..{logged}"
    bad = [k for k in a if a[k] != b[k]]
    return f"{got.name}: losses differ at steps {bad[:5]}" if bad else ""


def run_rc(cmd: list[str], *, log: Path) -> tuple[int, str]:
    """Run to completion; ``(exit code, its output)`` (also appended to ``log``)."""
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    with log.open("a") as fh:
        fh.write(proc.stdout)
    return proc.returncode, proc.stdout


def copied_run_dir_trial(name: str, work: Path, ref: Path, log: Path) -> dict:
    """Issue 22 §1: whatever run dir is resumed is the one written (a copy or a moved one)."""
    cache, base = work / "cache", work / "trials" / f"{name}-copied"
    a, b, c = base / "A", base / "B", base / "C"
    base.mkdir(parents=True)
    problems = []
    run(train_command(name, cache, 4, out=a), log=log)
    shutil.copytree(a, b)
    run(train_command(name, cache, 6, resume=a), log=log)
    before = tree_bytes(a)
    rc, out = run_rc(train_command(name, cache, 5, resume=b), log=log)
    if rc != 0:
        problems.append(f"resume of the copy failed ({rc}): {out.strip().splitlines()[-1:]}")
    if tree_bytes(a) != before:
        changed = sorted(k for k in set(before) | set(tree_bytes(a))
                         if before.get(k) != tree_bytes(a).get(k))
        problems.append(f"resuming the copy B wrote into the original A: {changed[:4]}")
    problems.append(prefix_losses(ref, b, 5))
    shutil.move(b, c)
    rc, out = run_rc(train_command(name, cache, 6, resume=c), log=log)
    if rc != 0:
        problems.append(f"resume of the moved dir failed ({rc}): {out.strip().splitlines()[-1:]}")
    if b.exists():
        problems.append("resuming the moved dir C re-created B")
    if tree_bytes(a) != before:
        problems.append("resuming the moved dir C wrote into A")
    problems.append(prefix_losses(ref, c, 6))
    diff = "; ".join(p for p in problems if p)
    temps = temporaries(base)
    shutil.rmtree(base, ignore_errors=True)
    return {"stage": f"{name}: copied run dir", "trial": 0, "diff": diff, "temporaries": temps,
            "ok": not diff and not temps}


LONG_FIRST = 10  # the first writer runs 10x the trial steps (two_writers_trial)


def two_writers_trial(name: str, work: Path, ref: Path, log: Path, steps: int) -> dict:
    """Issue 22 §2: a second run on a run dir in use is refused, naming the first's pid.

    The first run goes on for ``LONG_FIRST`` x ``steps`` steps, so that it still holds the run
    dir while the second one starts up (on a quiet machine ``steps`` steps were over before
    that); its first ``steps`` losses are the reference's (``--max-steps`` does not change
    the schedule)."""
    cache, base = work / "cache", work / "trials" / f"{name}-writers"
    run_dir = base / "R"
    base.mkdir(parents=True)
    long = LONG_FIRST * steps
    with log.open("a") as fh:
        first = subprocess.Popen(train_command(name, cache, long, out=run_dir), cwd=ROOT,
                                 env=env(), stdout=fh, stderr=subprocess.STDOUT)
    t0 = time.perf_counter()
    while first.poll() is None and steps_logged(run_dir) < 1 and time.perf_counter() - t0 < 1800:
        time.sleep(0.05)
    started_at = steps_logged(run_dir)
    rc2, out2 = run_rc(train_command(name, cache, steps, out=run_dir, seed=5), log=log)
    finished_at = steps_logged(run_dir)
    rc1 = first.wait()
    problems = []
    if started_at < 1 or finished_at >= long:
        problems.append(f"the second run ran while the first had logged {started_at}..."
                        f"{finished_at} of {long} steps (not inside its run)")
    if rc2 == 0:
        problems.append("the second run was not refused (exit 0)")
    elif str(first.pid) not in out2:
        problems.append(f"the second run's refusal does not name pid {first.pid}: "
                        f"{(out2.strip().splitlines() or [''])[-1][:160]}")
    if rc1 != 0:
        problems.append(f"the first run failed ({rc1})")
    problems.append(prefix_losses(ref, run_dir, steps, logged=long))
    cfg = run_dir / "config.json"
    if cfg.is_file() and json.loads(cfg.read_text()).get("seed") == 5:
        problems.append("config.json is the second run's")
    diff = "; ".join(p for p in problems if p)
    temps = temporaries(base)
    shutil.rmtree(base, ignore_errors=True)
    return {"stage": f"{name}: two writers", "trial": 0, "diff": diff, "temporaries": temps,
            "ok": not diff and not temps, "second_run_exit": rc2,
            "second_run_says": (out2.strip().splitlines() or [""])[-1][:300]}


def setup(work: Path, args, log: Path) -> None:
    """The demo data at toy size, its mask stores, fold-0 episodes and the slic store."""
    cache = ["--cache-dir", work / "cache"]
    run(command("qgnet-prep", "demo", *cache, "--n-train", args.n_train, "--n-val", args.n_val),
        log=log)
    for split in ("train", "val"):
        run(command("qgnet-prep", "masks", "--dataset", "demo", "--split", split, *cache,
                    "--no-progress"), log=log)
    run(command("qgnet-prep", "episodes", "--dataset", "demo", "--fold", 0, "--shot", 1,
                "--episodes", 8, *cache), log=log)
    run(command("qgnet-prep", "superpixels", "--dataset", "demo", "--method", "slic", "--split",
                "train", *cache, "--no-progress"), log=log)


def resume(stage: Stage, out: Path, scheduler, log: Path) -> str:
    """Re-run to completion; training resumes from its run dir (from scratch when the kill
    came before the first checkpoint: there is nothing to resume)."""
    if stage.name in ("prior", "fss"):
        run_dir = out / stage.name
        has_ckpt = run_dir.exists() and any(run_dir.rglob("*.pt"))
        if not has_ckpt:
            shutil.rmtree(run_dir, ignore_errors=True)
            run(stage.cmd(out, False, scheduler), log=log)
            return "restarted (no checkpoint yet)"
        run(stage.cmd(out, True, scheduler), log=log)
        return "resumed"
    run(stage.cmd(out, False, scheduler), log=log)
    return "resumed"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=10, help="Kills per stage (issue 15: 10).")
    p.add_argument("--train-trials", type=int, help="Kills per training stage (default "
                                                    "--trials).")
    p.add_argument("--stages", default="superpixels,masks,prior,fss")
    p.add_argument("--work", type=Path, default=Path("/tmp/qgnet-fault"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=32)
    p.add_argument("--n-val", type=int, default=12)
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--run-dir-trials", default="prior,fss",
                   help="Trainers that also get the copied-run-dir and two-writers trials "
                        "(issue 22 §1-§2); 'none' skips them.")
    add_out_argument(p, "fault_inject")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    work = args.work.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    log = work / "commands.log"
    report: list[str] = []  # what this run prints, for the record

    def say(line: str = "") -> None:
        print(line, flush=True)
        report.append(line)

    t0 = time.perf_counter()
    setup(work, args, log)
    say(f"setup (demo {args.n_train}+{args.n_val} images, masks, episodes, slic): "
        f"{time.perf_counter() - t0:.0f} s")
    all_stages = stages(work, args)
    records, summary = [], []
    for name in args.stages.split(","):
        stage = all_stages[name]
        ref = work / "ref" / name
        ref.mkdir(parents=True)
        t_ref = run(stage.cmd(ref, False, stage.schedulers[0]), log=log)
        say(f"{name}: reference run {t_ref:.1f} s")
        ok = 0
        n_trials = args.trials if stage.schedulers[0] or args.train_trials is None \
            else args.train_trials
        for i in range(n_trials):
            scheduler = stage.schedulers[i % len(stage.schedulers)]
            out = work / "trials" / f"{name}-{i}"
            out.mkdir(parents=True)
            # a random amount of work done (0 .. all but the last unit), then a random delay
            # within one unit: kills land in start-up, mid-shard/step and mid-write alike
            total = stage.progress(ref)
            target = rng.randint(0, max(total - 1, 0))
            delay = rng.uniform(0, t_ref / max(total, 1))
            rec = {"stage": name, "trial": i, "scheduler": scheduler,
                   **run_and_kill(stage.cmd(out, False, scheduler),
                                  progress=functools.partial(stage.progress, out), target=target,
                                  delay=delay, log=log)}
            try:
                rec["resume"] = resume(stage, out, scheduler, log) if rec["killed"] else "none"
                rec["diff"] = stage.compare(ref, out)
            except RuntimeError as e:
                rec["resume"], rec["diff"] = "failed", str(e)
            rec["temporaries"] = temporaries(out, work / "cache")
            rec["ok"] = not rec["diff"] and not rec["orphans"] and not rec["temporaries"]
            ok += rec["ok"]
            records.append(rec)
            say(f"{name:12s} #{i} {scheduler or '-':9s} kill at {rec['at_s']:5.1f} s, "
                f"{rec['progress_at_kill']}/{total} {'shards' if stage.schedulers[0] else 'steps'} "
                f"done ({'killed' if rec['killed'] else 'had finished'}, {rec['children']} "
                f"children): {rec['resume']}; "
                f"{'identical' if not rec['diff'] else rec['diff']}; orphans "
                f"{len(rec['orphans'])}; temporaries {len(rec['temporaries'])}"
                f"{'' if rec['ok'] else '  FAIL'}")
            shutil.rmtree(out, ignore_errors=True)
        summary.append((name, ok, n_trials, t_ref))
    extra = []  # (row name, ok) of the run-dir trials
    for name in [n for n in args.run_dir_trials.split(",") if n and n != "none"]:
        ref = work / "ref" / name
        if not ref.exists():  # the kill trials of this trainer did not run: its reference
            ref.mkdir(parents=True)
            run(all_stages[name].cmd(ref, False, None), log=log)
        trials = (("copied run dir", functools.partial(copied_run_dir_trial, name, work,
                                                        ref / name, log)),
                  ("two writers", functools.partial(two_writers_trial, name, work, ref / name,
                                                    log, args.train_steps)))
        for kind, trial in trials:
            try:
                rec = trial()
            except RuntimeError as e:  # a command of the trial failed outright
                rec = {"stage": f"{name}: {kind}", "trial": 0, "diff": str(e), "temporaries": [],
                       "ok": False}
            records.append(rec)
            extra.append((rec["stage"], rec["ok"]))
            say(f"{rec['stage']:26s} {'ok' if rec['ok'] else 'FAIL: ' + rec['diff']}"
                f"{'; temporaries ' + str(rec['temporaries']) if rec['temporaries'] else ''}")
    table = markdown_table(
        ["stage", "schedulers", "trials identical, no orphan, no temporary", "reference run"],
        [[name, ", ".join(s for s in all_stages[name].schedulers if s) or "-", f"{ok}/{n}",
          f"{t_ref:.1f} s"] for name, ok, n, t_ref in summary]
        + [[name, "-", f"{int(ok)}/1", "-"] for name, ok in extra], align="llll")
    say("\n" + table)
    summary += [(name, int(ok), 1, 0.0) for name, ok in extra]
    total = sum(s[1] for s in summary)
    say(f"\n{total}/{sum(s[2] for s in summary)} trials passed "
        f"({time.perf_counter() - t0:.0f} s in all)")
    write_result(args.out, {"args": {k: str(v) for k, v in vars(args).items()},
                            "records": records},
                 key=f"stages {args.stages}, run-dir trials {args.run_dir_trials}",
                 table="\n".join(report))
    return 0 if total == sum(s[2] for s in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
