"""The house rules of the layout (README "Layout"), checked with `ast` on the source tree.

Each rule is a function of a root directory returning its violations as `path:line what`, so
that it can be run on the real tree and, to prove it can fail, on a small planted one.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ("engine", "models", "training")
NATS_DOORS = ("engine/bus/", "engine/client.py")
NATS_CALLS = {"jetstream", "subscribe", "publish", "request", "delete_msg", "stream_info"}
NATS_HANDLES = ("nc", "js", "_nc", "_js")
SUBJECT_PREFIXES = ("activity.", "crm.", "reco.", "signals.", "dlq.", "catalog.", "nerve.")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80


def sources(root: Path) -> Iterator[tuple[str, ast.Module]]:
    """(path relative to root, parsed module) of every Python file of the checked packages."""
    for package in CHECKED:
        for path in sorted((root / package).rglob("*.py")):
            yield path.relative_to(root).as_posix(), ast.parse(path.read_text(), str(path))


def module_name(rel: str) -> str:
    parts = rel.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports(rel: str, tree: ast.Module, known: set[str]) -> Iterator[tuple[int, str]]:
    """(line, module) of every import of a module in `known` (relative ones resolved; a
    `from pkg import name` where pkg.name is a module imports that module)."""
    skip = _type_checking_lines(tree)
    here = module_name(rel).split(".")
    is_package = rel.endswith("__init__.py")
    for node in ast.walk(tree):
        if getattr(node, "lineno", 0) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_package else here[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:
                if f"{module}.{alias.name}" in known:
                    yield node.lineno, f"{module}.{alias.name}"


def rule_nats_behind_the_bus(root: Path) -> list[str]:
    """No `nats` import and no NATS call on a connection handle outside the doors."""
    found = []
    for rel, tree in sources(root):
        if rel.startswith(NATS_DOORS):
            continue
        for line, module in imports(rel, tree, set()):
            if module.split(".")[0] == "nats":
                found.append(f"{rel}:{line} imports {module}")
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            receiver = ast.unparse(node.func.value)
            last = receiver.rsplit(".", 1)[-1]
            if node.func.attr == "jetstream" or (
                node.func.attr in NATS_CALLS
                and (last in NATS_HANDLES or receiver.endswith("jetstream()"))
            ):
                found.append(f"{rel}:{node.lineno} calls {receiver}.{node.func.attr}()")
    return found


def rule_subjects_in_one_place(root: Path) -> list[str]:
    """No f-string that builds a subject outside engine/subjects.py."""
    found = []
    for rel, tree in sources(root):
        if rel == "engine/subjects.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr) and node.values:
                head = node.values[0]
                if (
                    isinstance(head, ast.Constant)
                    and isinstance(head.value, str)
                    and head.value.startswith(SUBJECT_PREFIXES)
                ):
                    found.append(f"{rel}:{node.lineno} builds subject {ast.unparse(node)}")
    return found


def rule_services_are_peers(root: Path) -> list[str]:
    """No module of engine/services imports another one (the package's face may)."""
    found = []
    known = {module_name(rel) for rel, _ in sources(root)}
    for rel, tree in sources(root):
        if not rel.startswith("engine/services/") or rel.endswith("__init__.py"):
            continue
        me = module_name(rel)
        for line, module in imports(rel, tree, known):
            if module.startswith("engine.services") and module not in (me, "engine.services"):
                found.append(f"{rel}:{line} imports {module}")
    return found


def rule_models_stand_alone(root: Path) -> list[str]:
    """models/ imports nothing of engine/ or training/."""
    found = []
    for rel, tree in sources(root):
        if rel.startswith("models/"):
            for line, module in imports(rel, tree, set()):
                if module.split(".")[0] in ("engine", "training"):
                    found.append(f"{rel}:{line} imports {module}")
    return found


def rule_no_import_circles(root: Path) -> list[str]:
    """No circle in the module import graph (Tarjan's strongly connected components). An
    import of a package's own face (`__init__`) from inside the package is not an edge."""
    trees = dict(sources(root))
    known = {module_name(rel) for rel in trees}
    graph: dict[str, set[str]] = {m: set() for m in known}
    for rel, tree in trees.items():
        me = module_name(rel)
        for _, module in imports(rel, tree, known):
            if module in known and module != me and not me.startswith(module + "."):
                graph[me].add(module)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[str] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(" <-> ".join(sorted(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


def rule_small_rooms(root: Path) -> list[str]:
    """No file over 400 lines, no function over 80 lines."""
    found = []
    for rel, tree in sources(root):
        lines = len((root / rel).read_text().splitlines())
        if lines > MAX_FILE_LINES:
            found.append(f"{rel} has {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{rel}:{node.lineno} {node.name}() has {length} lines")
    return found


RULES = [
    rule_nats_behind_the_bus,
    rule_subjects_in_one_place,
    rule_services_are_peers,
    rule_models_stand_alone,
    rule_no_import_circles,
    rule_small_rooms,
]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_the_tree_keeps_the_rule(rule: object) -> None:
    violations = rule(ROOT)  # type: ignore[operator]
    assert not violations, "\n".join(violations)


PLANTED = {
    rule_nats_behind_the_bus: {
        "engine/x.py": "import nats\n",
        "engine/y.py": "async def f(nc):\n    await nc.publish('a', b'')\n",
    },
    rule_subjects_in_one_place: {"engine/x.py": "def f(t):\n    return f'reco.{t}.home'\n"},
    rule_services_are_peers: {
        "engine/services/__init__.py": "",
        "engine/services/a.py": "",
        "engine/services/b.py": "from engine.services import a\n",
    },
    rule_models_stand_alone: {"models/m.py": "from engine.bus import Bus\n"},
    rule_no_import_circles: {
        "training/__init__.py": "",
        "training/a.py": "from training.b import x\n",
        "training/b.py": "from . import a\nx = 1\n",
    },
    rule_small_rooms: {
        "models/big.py": "x = 1\n" * 401,
        "models/long.py": "def f():\n" + "    x = 1\n" * 80,
    },
}


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_each_rule_finds_a_planted_violation(rule: object, tmp_path: Path) -> None:
    for package in CHECKED:
        (tmp_path / package).mkdir()
    for rel, text in PLANTED[rule].items():  # type: ignore[index]
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    found = rule(tmp_path)  # type: ignore[operator]
    assert len(found) >= 1
    if rule is rule_nats_behind_the_bus or rule is rule_small_rooms:
        assert len(found) == 2, found  # both planted files are found


def test_a_clean_planted_tree_passes_every_rule(tmp_path: Path) -> None:
    """The rules do not fire on code that keeps them (so the planted tests mean something)."""
    for package in CHECKED:
        (tmp_path / package).mkdir()
    (tmp_path / "engine" / "subjects.py").write_text("def s(t):\n    return f'reco.{t}'\n")
    (tmp_path / "engine" / "a.py").write_text("from engine.subjects import s\n")
    (tmp_path / "models" / "m.py").write_text("import numpy\n")
    for rule in RULES:
        assert rule(tmp_path) == [], rule.__name__
