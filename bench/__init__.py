"""Benchmark scripts (run as `python bench/NAME.py`); a package only so that import-linter
can check that nothing below imports them (the `bench` layer sits above `cli`)."""
