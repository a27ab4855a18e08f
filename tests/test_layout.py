"""The layout's rules, checked with `ast`: imports flow one way, NATS has one door, subjects
one home, services are peers, no import circles, and rooms fit on a screen.

Each rule is a function of a root directory returning its violations as `path:line: what`, so
it runs on the real tree and, to prove it can fail, on a small tree planted under `tmp_path`.
"""

from __future__ import annotations

import ast
import warnings
from collections.abc import Container, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLIENT = "client/src/nerve_client"
"""The client's own distribution (nerve-client): it imports nothing of the rest."""
FORBIDDEN = {
    "models": {"engine", "training"},
    "engine": {"training"},
    "training": set(),
    CLIENT: {"engine", "models", "training"},
}
CHECKED = ("engine", "models", "training", CLIENT)
NATS_DOORS = ("engine/bus/", "client/src/nerve_client/client.py")
NATS_METHODS = {"jetstream", "subscribe", "publish", "request", "delete_msg", "stream_info"}
SUBJECT_PREFIXES = (
    "activity.",
    "crm.",
    "reco.",
    "signals.",
    "anomalies.",
    "dlq.",
    "catalog.",
    "nerve.",
)
BUS_SUBJECT_PREFIXES = ("$KV.", "$JS.")
"""The JetStream API and KV subjects, which only the bus may spell out."""
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


# --- reading the tree -------------------------------------------------------------------------


def parse(path: Path) -> ast.Module:
    # SyntaxWarnings (say, a stray "\d") would be errors under filterwarnings=error, and they
    # are not what these rules are about.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.parse(path.read_text(), str(path))


def sources(root: Path, packages: tuple[str, ...] = CHECKED) -> Iterator[tuple[str, ast.Module]]:
    """(path relative to root, parsed module) of every Python file in the packages."""
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            yield path.relative_to(root).as_posix(), parse(path)


def module_name(rel: str) -> str:
    parts = rel.removeprefix("client/src/").removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(
    node: ast.AST, guarded: bool = False
) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement, functions included, and whether `if TYPE_CHECKING:` guards it."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node, guarded
    elif isinstance(node, ast.If) and _is_type_checking(node.test):
        for child in node.body:
            yield from _import_nodes(child, True)
        for child in node.orelse:
            yield from _import_nodes(child, guarded)
    else:
        for inner in ast.iter_child_nodes(node):
            yield from _import_nodes(inner, guarded)


def imports(
    rel: str, tree: ast.Module, known: Container[str] = frozenset()
) -> Iterator[tuple[int, str, bool]]:
    """(line, imported module, under TYPE_CHECKING) of every import, relative ones resolved.
    `from pkg import name`, where `pkg.name` is in `known`, imports the module `pkg.name`."""
    here = module_name(rel).split(".")
    package = here if rel.endswith("__init__.py") else here[:-1]
    for node, guarded in _import_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, guarded
            continue
        if node.level:
            base = package[: len(package) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        submodules = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in known]
        for submodule in submodules:
            yield node.lineno, submodule, guarded
        if len(submodules) < len(node.names):
            yield node.lineno, module, guarded


def known_modules(root: Path) -> set[str]:
    return {module_name(rel) for rel, _ in sources(root)}


# --- the rules --------------------------------------------------------------------------------


def one_way_violations(root: Path, package: str) -> list[str]:
    """Imports of `package` that flow the wrong way (models -> engine/training, engine ->
    training)."""
    found = []
    for rel, tree in sources(root, (package,)):
        for line, module, _ in imports(rel, tree):
            if module.split(".")[0] in FORBIDDEN[package]:
                found.append(f"{rel}:{line}: imports {module}")
    return found


def models_stand_alone(root: Path) -> list[str]:
    """models/ imports nothing from engine/ or training/."""
    return one_way_violations(root, "models")


def nats_imports(root: Path) -> list[str]:
    """`import nats` / `from nats...` outside engine/bus/ and nerve_client/client.py."""
    found = []
    for rel, tree in sources(root):
        if rel.startswith(NATS_DOORS):
            continue
        for line, module, _ in imports(rel, tree):
            if module.split(".")[0] == "nats":
                found.append(f"{rel}:{line}: imports {module}")
    return found


def _is_nats_handle(receiver: ast.expr) -> bool:
    """Types are not known statically: a NATS handle is a name like nc, js, self._nc or
    request.app.state.nc, or what `.jetstream()` returned."""
    while isinstance(receiver, ast.Await):
        receiver = receiver.value
    if isinstance(receiver, ast.Call):
        return isinstance(receiver.func, ast.Attribute) and receiver.func.attr == "jetstream"
    if isinstance(receiver, ast.Name):
        name = receiver.id
    elif isinstance(receiver, ast.Attribute):
        name = receiver.attr
    else:
        return False
    return name in ("nc", "js") or name.endswith(("_nc", "_js"))


def nats_calls(root: Path) -> list[str]:
    """Any `.jetstream()` call, or a NATS method called on a NATS handle, outside the doors."""
    found = []
    for rel, tree in sources(root):
        if rel.startswith(NATS_DOORS):
            continue
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            method, receiver = node.func.attr, node.func.value
            if method == "jetstream" or (method in NATS_METHODS and _is_nats_handle(receiver)):
                found.append(f"{rel}:{node.lineno}: calls {ast.unparse(node.func)}()")
    return found


def fstring_subjects(root: Path) -> list[str]:
    """An f-string that starts like a subject, outside nerve_client/subjects.py (and, for `$KV.` and
    `$JS.`, outside engine/bus/)."""
    found = []
    for rel, tree in sources(root):
        if rel == f"{CLIENT}/subjects.py":
            continue
        prefixes: tuple[str, ...] = SUBJECT_PREFIXES
        if not rel.startswith("engine/bus/"):
            prefixes += BUS_SUBJECT_PREFIXES
        for node in ast.walk(tree):
            if not (isinstance(node, ast.JoinedStr) and node.values):
                continue
            head = node.values[0]
            if (
                isinstance(head, ast.Constant)
                and isinstance(head.value, str)
                and head.value.startswith(prefixes)
            ):
                found.append(f"{rel}:{node.lineno}: builds subject {ast.unparse(node)}")
    return found


def services_import_services(root: Path) -> list[str]:
    """A module of engine/services/ importing another service (its package's face may)."""
    if not (root / "engine" / "services").is_dir():
        return []  # the services package does not exist yet: nothing to check
    known = known_modules(root)
    found = []
    for rel, tree in sources(root, ("engine/services",)):
        if rel == "engine/services/__init__.py":
            continue
        # a service may grow into a package; its own modules may import each other
        me = module_name(rel).split(".")[2]
        for line, module, _ in imports(rel, tree, known):
            parts = module.split(".")
            if parts[:2] == ["engine", "services"] and parts[2:3] != [me]:
                found.append(f"{rel}:{line}: imports {module}")
    return found


def _import_graph(root: Path) -> dict[str, dict[str, str]]:
    """module -> {imported module: "path:line" of the first such import}, within the tree.
    TYPE_CHECKING imports are not edges, nor is a module importing its own package's face."""
    trees = dict(sources(root))
    known = {module_name(rel) for rel in trees}
    graph: dict[str, dict[str, str]] = {m: {} for m in known}
    for rel, tree in trees.items():
        me = module_name(rel)
        for line, module, guarded in imports(rel, tree, known):
            if guarded or module not in known or module == me or me.startswith(module + "."):
                continue
            graph[me].setdefault(module, f"{rel}:{line}")
    return graph


def _strongly_connected(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def _shortest_cycle(graph: dict[str, dict[str, str]], component: list[str]) -> list[str]:
    """The shortest circle from the component's first module back to itself."""
    start, members = component[0], set(component)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w not in members:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if w not in came_from:
                    came_from[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"{component} is not strongly connected")


def import_circles(root: Path) -> list[str]:
    """Every import circle among the modules of engine/, models/, training/: one per strongly
    connected component, its shortest circle, then every import inside it (one must go)."""
    graph = _import_graph(root)
    found = []
    for component in _strongly_connected(graph):
        circle = _shortest_cycle(graph, component)
        lines = [f"circle {' -> '.join(circle)} (among {', '.join(component)}):"]
        lines += [
            f"  {graph[v][w]}: {v} imports {w}"
            for v in component
            for w in sorted(graph[v])
            if w in component
        ]
        found.append("\n".join(lines))
    return found


def _functions(
    node: ast.AST, prefix: str = ""
) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(qualified name, node) of every def and async def, methods and nested ones included."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            yield prefix + child.name, child
            yield from _functions(child, f"{prefix}{child.name}.<locals>.")
        elif isinstance(child, ast.ClassDef):
            yield from _functions(child, f"{prefix}{child.name}.")
        else:
            yield from _functions(child, prefix)


def oversized(root: Path) -> list[str]:
    """Files over MAX_FILE_LINES lines and functions over MAX_FUNCTION_LINES lines."""
    found = []
    for rel, tree in sources(root):
        length = len((root / rel).read_text().splitlines())
        if length > MAX_FILE_LINES:
            found.append(f"{rel}:{MAX_FILE_LINES + 1}: file has {length} lines")
        for name, node in _functions(tree):
            start, end = node.lineno, node.end_lineno or node.lineno
            if end - start + 1 > MAX_FUNCTION_LINES:
                found.append(f"{rel}:{start}: function {name} has {end - start + 1} lines")
    return found


# --- the real tree keeps the rules ------------------------------------------------------------


def report(rule: str, violations: list[str]) -> str:
    return f"{len(violations)} violation(s) of: {rule}\n" + "\n".join(violations)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_flow_one_way(package: str) -> None:
    assert list((ROOT / package).rglob("*.py")), f"{package} has no modules"
    violations = one_way_violations(ROOT, package)
    assert not violations, report(f"{package} imports none of {FORBIDDEN[package]}", violations)


def test_only_the_bus_package_imports_nats() -> None:
    # nerve_client/client.py is the stand-alone client other teams' services import
    allowed = {ROOT / "engine" / "bus", ROOT / CLIENT / "client.py"}
    for path in [*(ROOT / "engine").rglob("*.py"), *(ROOT / CLIENT).rglob("*.py")]:
        if "nats" in imported_packages(path):
            assert any(path == a or a in path.parents for a in allowed), path


def test_nats_is_imported_only_behind_the_bus() -> None:
    violations = nats_imports(ROOT)
    assert not violations, report(
        "nats is imported only in engine/bus/, nerve_client/client.py", violations
    )


def test_nats_is_called_only_behind_the_bus() -> None:
    violations = nats_calls(ROOT)
    assert not violations, report("NATS handles are used only in the bus", violations)


def test_subjects_are_built_only_in_engine_subjects() -> None:
    violations = fstring_subjects(ROOT)
    assert not violations, report("subjects are built only in nerve_client/subjects.py", violations)


def test_services_do_not_import_each_other() -> None:
    violations = services_import_services(ROOT)
    assert not violations, report("engine/services/* import no other service", violations)


def test_models_import_neither_engine_nor_training() -> None:
    violations = models_stand_alone(ROOT)
    assert not violations, report("models/ imports nothing of engine/ or training/", violations)


def test_there_is_no_import_circle() -> None:
    violations = import_circles(ROOT)
    assert not violations, report("no import circle", violations)


def test_files_and_functions_fit_on_a_screen() -> None:
    violations = oversized(ROOT)
    rule = f"files <= {MAX_FILE_LINES} lines, functions <= {MAX_FUNCTION_LINES} lines"
    assert not violations, report(rule, violations)


# --- each rule can fail: run on a planted tree --------------------------------------------------


def plant(root: Path, files: dict[str, str]) -> Path:
    for package in CHECKED:
        (root / package).mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def lines_of(violations: list[str]) -> set[str]:
    """The `path:line` of each violation."""
    return {v.split(": ", 1)[0] for v in violations}


def test_a_planted_nats_import_is_found(tmp_path: Path) -> None:
    root = plant(
        tmp_path,
        {
            "engine/x.py": "import nats\n",
            "training/t.py": "def f():\n    from nats.js.api import StreamConfig\n",
            "models/m.py": "import os\nimport nats.errors\n",
            "engine/bus/ok.py": "import nats\n",
            f"{CLIENT}/client.py": "from nats.aio.client import Client\n",
            f"{CLIENT}/x.py": "import nats\n",
            "engine/natsish.py": "import natsort\n",
        },
    )
    assert lines_of(nats_imports(root)) == {
        "engine/x.py:1",
        "training/t.py:2",
        "models/m.py:2",
        f"{CLIENT}/x.py:1",
    }


def test_a_planted_nats_call_is_found(tmp_path: Path) -> None:
    source = """\
async def f(nc, js, request, bus, self):
    await nc.publish("s", b"")
    await js.stream_info("S")
    await self._js.delete_msg("S", 1)
    await request.app.state.nc.request("s", b"")
    await (await nc.jetstream()).publish("s", b"")
    await self.bus_nc.subscribe("s")
    await other.jetstream()
    await bus.publish(event)
    await self.sync.publish(event)
    await self.nc.close()
"""
    root = plant(tmp_path, {"engine/x.py": source, "engine/bus/ok.py": source})
    assert lines_of(nats_calls(root)) == {f"engine/x.py:{n}" for n in range(2, 9)}


def test_a_planted_fstring_subject_is_found(tmp_path: Path) -> None:
    root = plant(
        tmp_path,
        {
            "engine/x.py": (
                "def f(u, t):\n"
                "    a = f'activity.{u}.{t}'\n"
                "    b = f'$KV.profiles.{u}'\n"
                "    c = f'user {u} did {t}'\n"
                "    d = 'reco.' f'{u}'\n"
                "    return a, b, c, d\n"
            ),
            "training/t.py": "def f(u):\n    return f'nerve.control.{u}'\n",
            "engine/bus/kv.py": "def f(u):\n    a = f'$JS.API.{u}'\n    return a, f'dlq.{u}'\n",
            f"{CLIENT}/subjects.py": "def f(u):\n    return f'reco.{u}', f'$KV.x.{u}'\n",
        },
    )
    assert lines_of(fstring_subjects(root)) == {
        "engine/x.py:2",
        "engine/x.py:3",
        "engine/x.py:5",
        "training/t.py:2",
        "engine/bus/kv.py:3",  # the bus may spell `$JS.`, but not a stream's subject
    }


def test_a_planted_service_importing_a_service_is_found(tmp_path: Path) -> None:
    root = plant(
        tmp_path,
        {
            "engine/services/__init__.py": "from engine.services import a, b\n",
            "engine/services/a.py": "from engine.events import Envelope\n",
            "engine/services/b.py": "from engine.services import a\n",
            "engine/services/c.py": "from .a import helper\n",
            "engine/services/d.py": "def f():\n    import engine.services.b\n",
            "engine/services/e/__init__.py": "from . import core\n",
            "engine/services/e/core.py": "from ..a import helper\n",
            "engine/services/e/extra.py": "from engine.services.e import core\n",
            "engine/events.py": "class Envelope: ...\n",
        },
    )
    assert lines_of(services_import_services(root)) == {
        "engine/services/b.py:1",
        "engine/services/c.py:1",
        "engine/services/d.py:2",
        "engine/services/e/core.py:1",
    }


def test_no_services_folder_passes_the_services_rule(tmp_path: Path) -> None:
    assert services_import_services(plant(tmp_path, {"engine/x.py": ""})) == []


def test_a_planted_models_import_of_engine_is_found(tmp_path: Path) -> None:
    root = plant(
        tmp_path,
        {
            "models/m.py": "import numpy\nfrom engine.bus import Bus\n",
            "models/n.py": "def f():\n    import training.cli\n",
            "engine/e.py": "from models.m import x\n",
        },
    )
    assert lines_of(models_stand_alone(root)) == {"models/m.py:2", "models/n.py:2"}


def test_a_planted_import_circle_is_found(tmp_path: Path) -> None:
    root = plant(
        tmp_path,
        {
            "training/__init__.py": "from training.a import x\n",
            "training/a.py": "from training.b import y\nx = 1\n",
            "training/b.py": "def f():\n    from . import c\n",
            "training/c.py": "from training import a\n",
            "models/__init__.py": "from models.p import P\n",
            "models/p.py": "import models\nfrom models import q\nP = 1\n",
            "models/q.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from models.p import P\n"
            ),
        },
    )
    circles = import_circles(root)
    assert len(circles) == 1, circles
    assert circles[0].startswith("circle training.a -> training.b -> training.c -> training.a")
    assert "training/c.py:1: training.c imports training.a" in circles[0]
    assert "training/b.py:2: training.b imports training.c" in circles[0]


def test_a_planted_long_file_and_long_function_are_found(tmp_path: Path) -> None:
    n = MAX_FUNCTION_LINES
    fits = "def fits():\n" + "    x = 1\n" * (n - 1)  # lines 1..n
    method = "class C:\n    async def m(self):\n" + "        x = 1\n" * (n - 1)  # from n + 2
    nested = "        def inner():\n" + "            x = 1\n" * n  # 2n+2..3n+2, m's end too
    root = plant(
        tmp_path,
        {
            "models/big.py": "x = 1\n" * (MAX_FILE_LINES + 1),
            "models/fits.py": "x = 1\n" * MAX_FILE_LINES,
            "engine/long.py": fits + method + nested,
        },
    )
    assert set(oversized(root)) == {
        f"engine/long.py:{n + 2}: function C.m has {n + n + 1} lines",
        f"engine/long.py:{n + n + 2}: function C.m.<locals>.inner has {n + 1} lines",
        f"models/big.py:{MAX_FILE_LINES + 1}: file has {MAX_FILE_LINES + 1} lines",
    }
