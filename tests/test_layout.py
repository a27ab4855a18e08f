"""Imports flow one way: models imports neither engine nor training; engine never training."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"models": {"engine", "training"}, "engine": {"training"}, "training": set()}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_flow_one_way(package: str) -> None:
    files = list((ROOT / package).rglob("*.py"))
    assert files, f"{package} has no modules"
    for path in files:
        bad = imported_packages(path) & FORBIDDEN[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_only_the_bus_package_imports_nats() -> None:
    # engine/client.py is the stand-alone client other teams' services import
    allowed = {ROOT / "engine" / "bus", ROOT / "engine" / "client.py"}
    for path in (ROOT / "engine").rglob("*.py"):
        if "nats" in imported_packages(path):
            assert any(path == a or a in path.parents for a in allowed), path
