"""Rules of the tree that import-linter cannot check (tests/ is not a package it sees).

- No test imports ``bench``: a benchmark may change its baselines and data at will, and a test
  that borrowed one would change with it (or fail to import where bench's data is absent). A
  test that needs a reference implementation keeps its own, beside the test.
- No file under bench/ edits ``sys.path``: the scripts run from the repository root as
  ``python -m bench.<name>`` and import each other as ``bench.<name>``.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench_imports(source: str) -> list[str]:
    """``import bench...`` / ``from bench... import`` statements and ``import_module("bench...")``
    calls in ``source``, as text."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] == "bench"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "bench":
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) \
                in ("import_module", "__import__") and node.args \
                and isinstance(node.args[0], ast.Constant) \
                and str(node.args[0].value).split(".")[0] == "bench":
            found.append(f"import_module({node.args[0].value!r})")
    return found


def sys_path_edits(source: str) -> list[int]:
    """Line numbers of ``sys.path.<anything>(...)`` calls and assignments to ``sys.path``."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        target = node.func.value if isinstance(node, ast.Call) and isinstance(
            node.func, ast.Attribute) else None
        if isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            target = next((t for t in targets if isinstance(t, ast.Attribute)), None)
        if isinstance(target, ast.Attribute) and target.attr == "path" \
                and isinstance(target.value, ast.Name) and target.value.id == "sys":
            lines.append(node.lineno)
    return sorted(lines)


def test_the_checks_find_what_they_look_for():
    assert bench_imports("import bench.common\nfrom bench.stage import make_dataset\n"
                         "from bench import common\nimport importlib\n"
                         "importlib.import_module('bench.x')\nimport benchmark\n"
                         "from pipeline.benchmarks import BENCHMARKS\n") == [
        "import bench.common", "from bench.stage import ...", "from bench import ...",
        "import_module('bench.x')"]
    assert sys_path_edits("import sys\nsys.path.insert(0, 'x')\nsys.path.append('y')\n"
                          "sys.path = []\nsys.path += ['z']\nprint(sys.path)\n") == [2, 3, 4, 5]


def test_no_test_imports_bench():
    offenders = {str(p.relative_to(ROOT)): bench_imports(p.read_text())
                 for p in sorted((ROOT / "tests").rglob("*.py"))}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, (f"tests import bench: {offenders}; give the test its own reference "
                           f"(a benchmark's baseline is not a test oracle)")


def test_no_bench_script_edits_sys_path():
    offenders = {str(p.relative_to(ROOT)): sys_path_edits(p.read_text())
                 for p in sorted((ROOT / "bench").glob("*.py"))}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, (f"sys.path edited at {offenders}; run the script as "
                           f"`python -m bench.<name>` and import `bench.<name>` instead")
