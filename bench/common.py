"""What every benchmark script shares: where things are, timing, the machine, Markdown tables
and the one writer of result files.

Scripts run from the repository root as ``python -m bench.<name>`` (the root is then on
``sys.path``; no script edits it) and import each other as ``from bench.x import ...``.

A benchmark's current figures live in one file, ``bench/results/<name>.json``::

    {"benchmark": "bench.stage_breakdown",
     "runs": {"slic fast-slic": {"command": "python -m bench.stage_breakdown ...",
                                 "commit": "1a2b3c4", "date": "2026-12-07T10:00:00Z",
                                 "machine": "x86_64 ..., 2 cores, load 3.1 / 2.8 / 2.5",
                                 "results": {...}, "table": "| ... |"}}}

one record per configuration the benchmark was run in (the key), each with the command that
made it, the commit it ran on (``+changes`` when the working tree differed), the machine and
its load, the numbers and the table the run printed. A new run of a configuration replaces
its record; the history is git's (``git log -p bench/results/<name>.json``). Scripts write
a record only when asked (``--out bench/results/<name>.json``), so a quick or trial run never
replaces a current figure.

Only the standard library is imported here, so that ``bench.device_kit`` and a lent GPU
machine's first call can import it too.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SHARED_DATA = ROOT.parent / "shared" / "data"  # real data beside the repository, never in it
CAMVID = Path(os.environ.get("QGNET_CAMVID", SHARED_DATA / "camvid"))
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def pin_threads(n: int = 1) -> None:
    """Size the OpenMP / BLAS / numba thread pools (call before numpy or torch is imported:
    they read these variables once)."""
    for var in THREAD_VARS:
        os.environ[var] = str(n)


# ------------------------------------------------------------------------------ timing
def timed(fn: Callable[[], Any], *, clock: Callable[[], float] = time.perf_counter
          ) -> tuple[float, Any]:
    """``(seconds, fn())`` by ``clock`` (wall time by default; ``time.process_time`` for the
    CPU time of this process, ``time.thread_time`` for this thread's)."""
    t0 = clock()
    result = fn()
    return clock() - t0, result


def best_of(fn: Callable[[], Any], repeat: int = 3, *, warmup: int = 0,
            clock: Callable[[], float] = time.perf_counter) -> tuple[float, Any]:
    """``(the fastest of repeat timed calls, the last result)`` after ``warmup`` untimed ones.

    The minimum is what a shared machine's other jobs disturb least (they only ever add)."""
    for _ in range(warmup):
        fn()
    best, result = float("inf"), None
    for _ in range(max(repeat, 1)):
        seconds, result = timed(fn, clock=clock)
        best = min(best, seconds)
    return best, result


def median_of(fn: Callable[[], Any], repeat: int = 5, *, warmup: int = 1,
              clock: Callable[[], float] = time.perf_counter) -> tuple[float, Any]:
    """``(the median of repeat timed calls, the last result)`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times, result = [], None
    for _ in range(max(repeat, 1)):
        seconds, result = timed(fn, clock=clock)
        times.append(seconds)
    return statistics.median(times), result


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (this one by default; another from Linux
    ``/proc``), all its threads."""
    if pid is None or pid == os.getpid():
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int | None = None) -> float:
    """CPU seconds of a process and of every descendant still running (DataLoader workers,
    a Dask pool, a subprocess and its children); children that exited and were waited for
    are :func:`children_cpu_seconds`'s."""
    import psutil  # a dependency of dask.distributed, and on the GPU image

    proc = psutil.Process(pid)
    total = 0.0
    for p in (proc, *proc.children(recursive=True)):
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:  # ended between the listing and the read
            continue
        total += t.user + t.system
    return total


def children_cpu_seconds() -> float:
    """CPU seconds of this process's waited-for children (and theirs), e.g. the commands a
    benchmark ran with ``subprocess.run``; the difference across a call is that call's."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# ------------------------------------------------------------------------------ provenance
def machine() -> str:
    """The machine in one line: architecture and CPU, cores, the load averages now."""
    cpu = platform.processor() or platform.machine()
    try:
        name = next(ln.split(":", 1)[1].strip() for ln in
                    Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name"))
        cpu = f"{platform.machine()} {name}"
    except (OSError, StopIteration):
        pass
    text = f"{cpu}, {os.cpu_count()} cores"
    if hasattr(os, "getloadavg"):
        text += ", load {:.1f} / {:.1f} / {:.1f}".format(*os.getloadavg())
    torch = sys.modules.get("torch")  # only when the benchmark uses it
    if torch is not None:
        text += f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
        if torch.cuda.is_available():
            text += f", GPU {torch.cuda.get_device_name()}"
    return text


def main_module() -> str:
    """``bench.<name>`` of the running script (``python -m bench.<name>``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return spec.name
    return f"bench.{Path(sys.argv[0]).stem}"


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that is running, as a person would type it from the repository root."""
    argv = sys.argv[1:] if argv is None else argv
    return " ".join(["python", "-m", main_module(), *map(_quote, argv)])


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(str(arg))


def git_commit(root: Path = ROOT) -> str | None:
    """The short commit of ``root``'s checkout, ``+changes`` when tracked files outside
    bench/results differ from it; None where there is no git (a lent GPU machine's copy)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":!bench/results"], cwd=root, check=True,
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+changes" if dirty else "")


# ------------------------------------------------------------------------------ output
def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], *,
                   align: str | None = None) -> str:
    """A Markdown table; ``align`` one letter per column, ``l`` or ``r`` (default: the first
    column left, the others right)."""
    align = align or "l" + "r" * (len(header) - 1)
    if len(align) != len(header):
        raise ValueError(f"align {align!r} has {len(align)} letters for {len(header)} columns")
    lines = ["| " + " | ".join(map(str, header)) + " |",
             "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def add_out_argument(parser: argparse.ArgumentParser, name: str) -> None:
    """The ``--out FILE`` option every benchmark has."""
    parser.add_argument("--out", type=Path, default=None, metavar="FILE",
                        help=f"merge this run's record into FILE (bench/results/{name}.json "
                             f"holds the current figures; default: print only)")


def write_result(out: str | Path | None, results: Any, *, key: str,
                 table: str | None = None, **fields: Any) -> Path | None:
    """Merge this run's record under ``key`` into the result file ``out`` (nothing when
    ``out`` is None); returns the path written.

    The record: the command line, the commit, the date (UTC), the machine, ``results``,
    ``table`` when given and any other ``fields``. Other keys' records are kept; a file in
    another format is refused rather than overwritten."""
    if out is None:
        return None
    path = Path(out)
    data = {"benchmark": main_module(), "runs": {}}
    if path.is_file():
        old = json.loads(path.read_text())
        if not isinstance(old, dict) or not isinstance(old.get("runs"), dict):
            raise SystemExit(f"{path}: not a bench result file ({{'benchmark', 'runs'}}); "
                             f"pass another --out or remove it")
        data["runs"] = old["runs"]
    record = {"command": command_line(), "commit": git_commit(),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "machine": machine(), **fields, "results": results}
    if table is not None:
        record["table"] = table
    data["runs"][key] = record
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(path)
    print(f"wrote {path} [{key}]", flush=True)
    return path
