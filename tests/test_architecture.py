"""The code's shape, checked: the flow config -> build -> measure -> record -> report stays one-way.

Imports are read from the source (module level and inside functions alike), not by importing.
"""
import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

BENCH = ROOT / "bench"
MODULES = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
           for p in sorted(BENCH.rglob("*.py"))}
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(bench modules, third-party top-level packages) that `path` imports."""
    ours, theirs = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            # `from bench.report import plots` imports the module bench.report.plots.
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                     for a in node.names]
        else:
            continue
        for name in names:
            (ours if name.split(".")[0] == "bench" else theirs).add(name if name.startswith("bench") else
                                                                      name.split(".")[0])
    return {n for n in ours if n in MODULES}, theirs


GRAPH = {m: _imports(p)[0] for m, p in MODULES.items()}
THIRD = {m: _imports(p)[1] for m, p in MODULES.items()}


def _reach(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def _defines_module_or_table(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(ast.unparse(b) in ("nn.Module", "Module", "torch.nn.Module")
                                                  for b in node.bases):
            return True
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == "STRATEGIES" for t in targets):
                return True
    return False


def test_the_import_graph_has_no_cycle():
    cyclic = [m for m in GRAPH if m in _reach(m)]
    assert cyclic == []


def test_the_analysis_never_reaches_the_model_side():
    model_side = {m for m, p in MODULES.items() if _defines_module_or_table(p)}
    assert {"bench.models.model", "bench.models.lora", "bench.models.strategies"} <= model_side
    analysis = {m for m in MODULES if THIRD[m] & {"pandas", "matplotlib"}}
    assert "bench.report.load" in analysis and "bench.report.plots" in analysis
    leaks = {m: sorted(_reach(m) & model_side) for m in analysis if _reach(m) & model_side}
    assert leaks == {}
    assert not any("torch" in THIRD[m] for m in {m for m in MODULES if m.startswith("bench.report")})


def test_the_record_schema_is_plain_python():
    assert THIRD["bench.record.schema"] <= {"__future__", "dataclasses", "types", "typing"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_and_functions_stay_small(module):
    path = MODULES[module]
    lines = path.read_text().count("\n")
    assert lines <= MAX_MODULE_LINES, f"{path.name}: {lines} lines"
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


def test_every_module_has_its_test_module():
    missing = []
    for module, path in MODULES.items():
        rel = path.relative_to(BENCH)
        if rel.name == "__init__.py":
            continue
        stem = "main" if rel.stem == "__main__" else rel.stem
        if not (ROOT / "tests" / rel.parent / f"test_{stem}.py").exists():
            missing.append(str(rel))
    assert missing == []


def test_every_strategy_has_its_own_colour():
    from bench.models.strategies import STRATEGIES
    from bench.report.plots import COLOURS

    assert set(COLOURS) == set(STRATEGIES)
    assert len(set(COLOURS.values())) == len(COLOURS)
