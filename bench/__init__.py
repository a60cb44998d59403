"""Benchmark scripts, run from the repository root as ``python -m bench.<name>``; they share
bench/common.py (timing, the machine, tables, the one result writer) and write their current
figures to bench/results/<name>.json. Nothing in pipeline/, model/, cli/ or tests/ imports
this package (import-linter's layers; tests/test_layout.py)."""
