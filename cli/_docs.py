"""Render every command's ``--help`` into docs/cli.md (``python -m cli._docs``).

tests/cli/test_docs.py fails when docs/cli.md is out of date, so the reference never drifts
from the code.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from cli import app, evaluate, export, predict, prep, train

GROUPS = [("qgnet-prep", prep.main), ("qgnet-train", train.main), ("qgnet-eval", evaluate.main)]
# single commands (no subcommands)
COMMANDS = [("qgnet-export", export.main), ("qgnet-predict", predict.main), ("qgnet-app", app.main)]
HEADER = """# Command reference

Generated from the commands' own `--help` by `python -m cli._docs`; do not edit by hand.
The options of `qgnet-prep superpixels|masks|episodes`, `qgnet-train fss|prior` and
`qgnet-eval fss|bench` can also come from a TOML file (`--config FILE`) or a `QGNET_<OPTION>`
environment variable (the option's name or its flag's: `QGNET_USE_PRIOR_MAP` or
`QGNET_PRIOR_MAP` for `--prior-map`); the command line wins, and every source is checked
against the same bounds (see docs/design.md). A `QGNET_*` variable that no command reads is
refused with the closest known name.
"""


def variables() -> str:
    """The environment variables, per command (from the configs themselves)."""
    import importlib

    from cli._options import CONFIGS, OTHER_VARIABLES
    from pipeline.settings import env_names

    lines = ["\n## Environment variables\n", "| command | variables |", "|---|---|"]
    for command, target in CONFIGS.items():
        module, name = target.split(":")
        names = sorted(env_names(getattr(importlib.import_module(module), name)))
        lines.append(f"| `{command}` | {', '.join(f'`{n}`' for n in names)} |")
    for name, what in OTHER_VARIABLES.items():
        lines.append(f"| {what} | `{name}` |")
    return "\n".join(lines) + "\n"


def render() -> str:
    out = [HEADER]
    for prog, group in GROUPS:
        # the group's own context_settings (-h): without them the text depended on whether a
        # test had invoked the group before (click caches the help option per command)
        ctx = click.Context(group, info_name=prog, terminal_width=100, max_content_width=100,
                            **group.context_settings)
        out.append(f"\n## `{prog}`\n\n```\n{group.get_help(ctx)}\n```\n")
        for name in group.list_commands(ctx):
            cmd = group.get_command(ctx, name)
            sub = click.Context(cmd, info_name=name, parent=ctx, terminal_width=100,
                                max_content_width=100)
            out.append(f"\n### `{prog} {name}`\n\n```\n{cmd.get_help(sub)}\n```\n")
    for prog, cmd in COMMANDS:
        ctx = click.Context(cmd, info_name=prog, terminal_width=100, max_content_width=100,
                            **cmd.context_settings)
        out.append(f"\n## `{prog}`\n\n```\n{cmd.get_help(ctx)}\n```\n")
    out.append(variables())
    return "".join(out)


def main() -> int:
    target = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
    text = render()
    if "--check" in sys.argv:
        ok = target.is_file() and target.read_text() == text
        print("docs/cli.md is up to date" if ok else "docs/cli.md is stale: run python -m cli._docs")
        return 0 if ok else 1
    target.write_text(text)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
