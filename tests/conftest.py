"""Fixtures shared by tests/model and tests/cli: a tiny few-shot folder dataset with its mask
stores and episode files, built with the real stage functions.

The dataset: 80 x 80 images, 8 classes with their own colours; each image holds one
48 x 48 object (usable: >= 2048 px) and one 20 x 20 object, the two left columns are 255.
"""
import numpy as np
import pytest
import torch
from PIL import Image

COLOURS = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
                    [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230]])


def two_objects(i, rng, size):
    """The default toy mask: a 48 x 48 square of class (i % 8) + 1 at a random place, a 20 x 20
    one of class (i + 3) % 8 + 1 in the corner, the first two columns 255."""
    a, b = i % 8 + 1, (i + 3) % 8 + 1
    mask = np.zeros((size, size), np.uint8)
    y, x = rng.integers(22, size - 48, 2)
    mask[y:y + 48, x:x + 48] = a
    mask[2:22, 2:22] = b
    mask[:, :2] = 255
    return mask


def write_toy_folder(root, *, n_train=32, n_val=16, size=80, seed=0, draw=two_objects):
    """A folder dataset of 8 classes: image i of each split is noise with the classes of
    ``draw(i, rng, size)`` (its mask) painted in their colours."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("\n".join(f"c{k}" for k in range(1, 9)) + "\n")
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        names = []
        for i in range(n):
            img = rng.integers(90, 140, (size, size, 3)).astype(np.uint8)
            mask = draw(i, rng, size)
            for c in np.unique(mask[(mask > 0) & (mask < 255)]):
                img[mask == c] = COLOURS[c - 1]
            names.append(f"{split}{i:03d}")
            Image.fromarray(img).save(root / "images" / f"{names[-1]}.png")
            Image.fromarray(mask).save(root / "masks" / f"{names[-1]}.png")
        (root / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


@pytest.fixture(scope="session")
def toy_folder_writer():
    """:func:`write_toy_folder`, for tests that draw their own toy (``draw=``)."""
    return write_toy_folder


@pytest.fixture(scope="session")
def make_fss_toy(tmp_path_factory):
    """``make_fss_toy(name, n_episodes)`` -> ``{"root", "cache", "base"}``: the toy folder
    dataset, its train/val mask stores and fold-0 1-shot episodes in a fresh temp dir."""
    from pipeline.episode_stage import build_episodes
    from pipeline.mask_stage import build_mask_store

    def make(name: str, n_episodes: int) -> dict:
        torch.set_num_threads(1)
        base = tmp_path_factory.mktemp(name)
        root, cache = write_toy_folder(base / "data"), str(base / "cache")
        for split in ("train", "val"):
            build_mask_store("folder", split=split, cache_dir=cache, root=root, workers=1,
                             scheduler="sync", progress=False)
        build_episodes("folder", cache_dir=cache, folds=[0], shots=[1], n_episodes=n_episodes,
                       echo=lambda s: None)
        return {"root": str(root), "cache": cache, "base": base}

    return make


@pytest.fixture
def file_size_limit():
    """``with file_size_limit(nbytes): ...``: every file this process writes is capped at
    ``nbytes`` (``RLIMIT_FSIZE``, what ``ulimit -f`` sets): a longer write fails with the
    kernel's EFBIG, as a full disk fails with ENOSPC. Python ignores SIGXFSZ, so the process
    sees the error instead of being killed. No root needed; the limit is restored after."""
    import contextlib
    import resource

    @contextlib.contextmanager
    def limit(nbytes: int):
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(nbytes), hard))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

    return limit


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nothing can be written into: mode 0o555, and where that does not stop this
    process (root ignores modes), also the immutable attribute (``chattr +i``); skips where
    neither works. Cleared again after the test."""
    import os
    import shutil
    import subprocess

    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = False
    if os.access(folder, os.W_OK):  # root: modes do not bind
        chattr = shutil.which("chattr")
        if chattr and subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode == 0:
            immutable = True
        else:
            folder.chmod(0o755)
            pytest.skip("running as root without chattr +i: cannot make a read-only folder")
    try:
        yield folder
    finally:
        if immutable:
            subprocess.run([shutil.which("chattr"), "-i", str(folder)], check=True)
        folder.chmod(0o755)
