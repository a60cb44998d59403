"""The three console scripts: lazy subcommands, cheap --help."""
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cli import evaluate, prep, train


@pytest.mark.parametrize("group", [prep.main, train.main, evaluate.main])
def test_help_lists_every_subcommand(group):
    result = CliRunner().invoke(group, ["--help"])
    assert result.exit_code == 0, result.output
    table = {prep.main: prep.COMMANDS, train.main: train.COMMANDS,
             evaluate.main: evaluate.COMMANDS}[group]
    for name in table:
        assert name in result.output


def test_prep_help_does_not_import_heavy_modules():
    code = ("import sys; from click.testing import CliRunner; from cli.prep import main; "
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0; "
            "heavy = [m for m in ('torch', 'zarr', 'numba', 'dask') if m in sys.modules]; "
            "print(heavy); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_subcommand_is_a_usage_error():
    result = CliRunner().invoke(prep.main, ["superpixel"])
    assert result.exit_code == 2
    assert "No such command" in result.output


def test_project_errors_are_one_line_and_bugs_keep_their_traceback():
    import click
    import pytest

    from cli._errors import run_friendly
    from pipeline.errors import CheckpointError, StoreError

    def fail(exc):
        raise exc

    for exc in (StoreError("cache/x.zarr: incomplete; run qgnet-prep masks"),
                CheckpointError("a.pt: not a checkpoint"),
                FileNotFoundError(2, "No such file or directory", "/nope/file.pt"),
                OSError(30, "Read-only file system", "/ro/cache")):
        with pytest.raises(click.ClickException) as info:
            run_friendly(fail, exc)
        assert "\n" not in info.value.message
    assert "/nope/file.pt" in run_friendly.__globals__["message"](
        FileNotFoundError(2, "No such file or directory", "/nope/file.pt"))
    with pytest.raises(KeyError):  # a bug, not the user's to fix: the traceback stays
        run_friendly(fail, KeyError("cfg"))


def test_train_help_does_not_import_torch():
    """The options of qgnet-train are built from the config dataclasses (cli/_options.py):
    the configs stay torch-free so that --help is cheap."""
    code = ("import sys; from click.testing import CliRunner; from cli.train import main; "
            "rs = [CliRunner().invoke(main, a) for a in (['--help'], ['fss', '--help'], "
            "['prior', '--help'])]; assert all(r.exit_code == 0 for r in rs); "
            "heavy = [m for m in ('torch', 'zarr', 'numba', 'dask') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
