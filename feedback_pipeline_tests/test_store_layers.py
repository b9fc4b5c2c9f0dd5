"""The store layer's import graph: ``store/tables.py`` at the bottom, no circle, no arrow back up to ingestion."""

import ast
from pathlib import Path

import feedback_pipeline.store as store_package

STORE = Path(store_package.__file__).parent
# daily_stats reads the ingestion layer's validation error (a known arrow, outside this change).
ALLOWED_UPWARD = {"daily_stats.py": {"feedback_pipeline.ingestion.records"}}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):  # function-level (lazy) imports count too: a circle hidden in a function is one
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("feedback_pipeline"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("feedback_pipeline")}
    return found


def test_store_modules_form_no_circle_and_import_nothing_above_them():
    graph = {p.stem: _imports(p) for p in STORE.glob("*.py")}
    assert _imports(STORE / "tables.py") == set()
    for name, imports in graph.items():
        upward = {m for m in imports if not m.startswith("feedback_pipeline.store")} - {"feedback_pipeline.settings"}
        assert upward <= ALLOWED_UPWARD.get(f"{name}.py", set()), (name, upward)
    edges = {name: {m.rsplit(".", 1)[1] for m in imports if m.startswith("feedback_pipeline.store.")}
             for name, imports in graph.items()}

    def reaches(start: str, goal: str, seen=()) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, (*seen, n))) for n in edges.get(start, ()))

    assert not [name for name in edges if reaches(name, name)]


def test_ingestion_takes_the_columns_from_the_store():
    from feedback_pipeline.ingestion import records
    from feedback_pipeline.store import tables

    assert records.COLUMNS is tables.COLUMNS
