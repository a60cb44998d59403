"""model.speed's host facts: the cores present and the loader's default workers (issue 20 §3)."""
from __future__ import annotations

import os

import pytest

from model import speed


@pytest.mark.parametrize("cores,world,want", [(16, 1, 14), (16, 2, 6), (2, 1, 1), (1, 1, 1),
                                              (3, 1, 1), (8, 8, 1), (200, 1, 32)])
def test_default_workers_leave_the_main_process_and_the_pin_thread(cores, world, want):
    assert speed.default_loader_workers(cores=cores, world=world) == want


def _affinity() -> int:
    return len(os.sched_getaffinity(0))


@pytest.mark.parametrize("text,want", [("200000 100000\n", 2), ("150000 100000", 2),
                                       ("50000 100000", 1), ("max 100000\n", None),
                                       (None, None), ("garbage", None)])
def test_available_cores_reads_the_cgroup_quota(tmp_path, text, want):
    if text is not None:
        (tmp_path / "cpu.max").write_text(text)
    got = speed.available_cores(cgroup_root=tmp_path)
    assert got == (_affinity() if want is None else min(want, _affinity()))


def test_prior_config_takes_its_default_workers_from_the_cores(monkeypatch):
    from model.prior.config import PriorConfig, finalize_config

    monkeypatch.setattr(speed, "available_cores", lambda **_: 16)
    cfg = finalize_config(PriorConfig(dataset="demo", out="x"))
    assert cfg.workers == 14
    assert finalize_config(PriorConfig(dataset="demo", out="x"), world=2).workers == 6
    assert finalize_config(PriorConfig(dataset="demo", out="x", workers=3)).workers == 3
    assert finalize_config(PriorConfig(dataset="demo", out="x", workers=0)).workers == 0
