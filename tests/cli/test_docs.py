"""docs/cli.md is generated from the commands; it must match them."""
from pathlib import Path

from cli._docs import render


def test_cli_reference_is_up_to_date():
    doc = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
    assert doc.read_text() == render(), "docs/cli.md is stale: run `python -m cli._docs`"


def test_every_lazy_subcommand_resolves():
    text = render()
    for cmd in ("qgnet-prep superpixels", "qgnet-prep episodes", "qgnet-train prior",
                "qgnet-train fss", "qgnet-eval fss", "qgnet-eval show"):
        assert f"### `{cmd}`" in text
