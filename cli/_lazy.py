"""A click group whose subcommands are imported only when they run.

``qgnet-prep --help`` lists the subcommands from a static table of one-line summaries
without importing their modules, so it never imports torch, zarr or numba.
"""
from __future__ import annotations

import importlib

import click

from cli._errors import run_friendly


class LazyGroup(click.Group):
    """``commands`` maps name -> ("module:attribute", "one-line help")."""

    def __init__(self, *args, lazy: dict[str, tuple[str, str]] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._lazy = dict(lazy or {})

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self._lazy))

    def get_command(self, ctx, name):
        if name in self._lazy:
            target, _ = self._lazy[name]
            module, attr = target.split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        # every subcommand fails the same way: project errors as one line (cli/_errors.py)
        return run_friendly(super().invoke, ctx)

    def format_commands(self, ctx, formatter):
        rows = [(name, self._lazy[name][1]) for name in sorted(self._lazy)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
