"""The two bin functions, one meaning each: ``parse_bins`` reads the option string,
``model.fss.qgnet.resolve_bins`` sizes the bins for one feature map."""
from model.fss.build import parse_bins
from model.fss.qgnet import resolve_bins


def test_parse_bins_auto_is_pfenet_at_473_else_fractions():
    assert parse_bins("auto", 473) == (60, 30, 15, 8)
    assert parse_bins("auto", "473") == (60, 30, 15, 8)
    assert parse_bins("auto", 417) is None  # QGNet falls back to fractions of the grid


def test_parse_bins_lists():
    assert parse_bins("60,30,15,8", 417) == (60, 30, 15, 8)
    got = parse_bins("1,0.5,0.25,0.125", 473)
    assert got == (1.0, 0.5, 0.25, 0.125) and all(isinstance(v, float) for v in got)
    mixed = parse_bins("8,0.5", 200)
    assert mixed == (8, 0.5) and isinstance(mixed[0], int)


def test_parsed_spec_feeds_resolve_bins():
    assert resolve_bins(parse_bins("auto", 473), (60, 60)) == [(60, 60), (30, 30), (15, 15),
                                                                (8, 8)]
    assert resolve_bins(parse_bins("1,0.5", 0), (9, 9)) == [(9, 9), (4, 4)]
