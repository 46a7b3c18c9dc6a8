"""The house stays one-way (hipx/__init__.py): a folder of the package imports only the folders below it,
nothing in the package imports a command at the top, and the design card's files at the top stay fronts
over the package or commands."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("core", "data", "prepare", "stats", "models", "runs", "inference", "reports", "training")
# what each folder may import besides itself (hipx/__init__.py's table)
ALLOWED = {"core": set(), "data": {"core"}, "prepare": {"core", "data"}, "stats": {"core"}, "models": {"core"},
           "runs": {"core", "data"}, "inference": {"core", "data", "prepare", "stats", "models", "runs"},
           "reports": set(LAYERS[:7]), "training": set(LAYERS[:8])}
TOP = {p.stem for p in ROOT.glob("*.py")} | {"models"}


def imported(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


MODULES = sorted((ROOT / "hipx").rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_module_imports_only_its_own_folder_and_those_below(path):
    parts = path.relative_to(ROOT / "hipx").parts
    if len(parts) < 2:
        return
    folder = parts[0]
    for name in imported(path):
        top = name.split(".")[0]
        assert top not in TOP, f"{path.name} imports the command or front {name}"
        if top == "hipx" and "." in name:
            other = name.split(".")[1]
            assert other == folder or other in ALLOWED[folder], f"{path.name} ({folder}) imports {name}"


def test_every_folder_says_what_it_owns():
    for folder in LAYERS:
        doc = ast.get_docstring(ast.parse((ROOT / "hipx" / folder / "__init__.py").read_text()))
        assert doc and len(doc.splitlines()) >= 2, folder
