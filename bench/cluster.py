"""The superpixel stage on a real dask.distributed cluster against the threads scheduler.

    python -m bench.cluster [--images 200] [--method slic] [--out bench/results/cluster.json]

Starts ``dask scheduler`` and two ``dask worker --nthreads 1`` processes on this machine
(``--preload pipeline.dask_preload``, as docs/prep.md tells a user to), then builds the same
store alternately with ``--scheduler threads --workers 2`` and ``--scheduler tcp://...``,
twice each, in one run: the ratio is measured under the same machine load. With
``--no-preload`` the workers start bare and the runner prepares them (malloc thresholds,
kernels) inside the first timed run; on the code before issue 14, which did not, that
flag measured the old behaviour (0.43-0.47x threads; docs/benchmarks.md, superpixels).
CPU ms per image: this process for the threads scheduler; for the cluster, this process (the
client) plus the scheduler and worker process trees (nanny and worker), from /proc.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import (
    ROOT,
    add_out_argument,
    cpu_seconds,
    markdown_table,
    tree_cpu_seconds,
    write_result,
)
from bench.stage import make_dataset


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(preload: bool, log_dir: Path) -> tuple[str, list[subprocess.Popen]]:
    dask = str(Path(sys.executable).with_name("dask"))
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], env=env, cwd=ROOT,
                              stdout=open(log_dir / "scheduler.log", "w"), stderr=subprocess.STDOUT)]
    for i in range(2):
        cmd = [dask, "worker", address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
               "--memory-limit", "0"]
        if preload:
            cmd += ["--preload", "pipeline.dask_preload"]
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=open(log_dir / f"worker{i}.log", "w"),
                                      stderr=subprocess.STDOUT))
    from distributed import Client

    try:
        with Client(address, timeout=120) as client:
            client.wait_for_workers(2, timeout=300)
    except BaseException:
        stop_cluster(procs)
        raise
    return address, procs


def stop_cluster(procs):
    for p in reversed(procs):
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--method", default="slic", choices=("slic", "felzenszwalb"))
    ap.add_argument("--no-preload", action="store_true")
    add_out_argument(ap, "cluster")
    args = ap.parse_args(argv)

    from pipeline.datasets import open_dataset
    from pipeline.superpixel_stage import build_superpixel_store
    from pipeline.superpixels import resolve_backend, segment

    backend = resolve_backend(args.method, "auto")
    work = Path(tempfile.mkdtemp(prefix="qgnet-bench-dist-"))
    procs = []
    rows = []
    try:
        source = make_dataset(work / "data", args.images)
        ds = open_dataset("folder", work / "data")
        segment(ds.load_image(ds.ids("train")[0]), method=args.method, backend=backend)  # warm-up
        address, procs = start_cluster(not args.no_preload, work)
        for rep in range(2):
            for scheduler in ("threads", address):
                out = work / f"{rep}-{len(rows)}.zarr"
                cpu0 = cpu_seconds() + sum(tree_cpu_seconds(p.pid) for p in procs)
                store, report = build_superpixel_store(ds, split="train", method=args.method,
                                                       backend=backend, out=out, workers=2,
                                                       scheduler=scheduler, progress=False)
                cpu = cpu_seconds() + sum(tree_cpu_seconds(p.pid) for p in procs) - cpu0
                rows.append({"run": rep, "scheduler": "threads" if scheduler == "threads" else "distributed",
                             "images_per_s": round(report.images_per_s, 1),
                             "whole_call_s": round(report.seconds, 2),
                             "cpu_ms_per_image": round(1e3 * cpu / report.computed, 1)})
                print(rows[-1], flush=True)
                shutil.rmtree(out)
    finally:
        stop_cluster(procs)
        shutil.rmtree(work, ignore_errors=True)
    for rep in range(2):
        thr = next(r for r in rows if r["run"] == rep and r["scheduler"] == "threads")
        dist = next(r for r in rows if r["run"] == rep and r["scheduler"] == "distributed")
        dist["ratio_vs_threads"] = round(dist["images_per_s"] / thr["images_per_s"], 2)
    preload = not args.no_preload
    result = {"source": source, "method": args.method, "backend": backend, "preload": preload,
              "rows": rows}
    table = markdown_table(["run", "scheduler", "images/s", "whole call s", "x threads",
                            "CPU ms per image"],
                           [[r["run"], r["scheduler"], r["images_per_s"], r["whole_call_s"],
                             r.get("ratio_vs_threads", ""), r["cpu_ms_per_image"]] for r in rows],
                           align="rlrrrr")
    print(table)
    write_result(args.out, result, table=table,
                 key=f"{source.split(' (')[0]}, {args.method} {backend}, "
                     + ("preload" if preload else "no preload"))
    return result


if __name__ == "__main__":
    main()
