"""Move the client's pure modules out of the engine into client/src/nerve_client (issue 16/12).

Run from the repository root, in a git checkout whose work is committed:

    python client/migrate.py    # idempotent: a second run changes nothing and says so

What it does, in order, each step skipped when already done and refused loudly (exit 1, one
line naming the file and the text it expected) when the tree is not as expected:

1. `git mv` engine/{client,errors,ids,identity,subjects}.py and engine/events/ into
   client/src/nerve_client/;
2. splits the client's half out of two engine modules into nerve_client/credentials.py:
   `Credential` and `Tls` from engine/credentials.py, `auth_options` from
   engine/bus/connection.py (cut by `ast`, so edits elsewhere in those files do not matter);
3. rewrites imports and references in engine/ models/ training/ tests/ bench/ client/src/
   (`from engine.X import` / `import engine.X` / `engine.X.name` / `engine/X.py` in text) and
   the same references in README.md and widgets/*.js;
4. edits pyproject.toml (packages, package data, mypy, ruff), Makefile (lint the client) and
   tests/test_layout.py (the client is checked too, the NATS door and the subjects' home moved)
   by exact string replacement;
5. sorts imports and formats the touched Python files with ruff, then runs `ruff check` on them;
6. writes the shipped JSON Schemas again from the models as they now are
   (`python -m nerve_client.schemas`, with .venv/bin/python when there is one).

Afterwards run `pip install -e ".[test]"` again: the editable install must learn the new
package directory. Stdlib only, so any Python 3.11 runs it.
"""

from __future__ import annotations

import ast
import io
import os
import re
import shutil
import subprocess
import sys
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

CLIENT = "client/src/nerve_client"
MODULES = ("client", "errors", "ids", "identity", "subjects", "events")
"""engine.<name> that move whole to nerve_client.<name> (events is a package)."""
MOVES = {
    **{f"engine/{m}.py": f"{CLIENT}/{m}.py" for m in MODULES if m != "events"},
    "engine/events": f"{CLIENT}/events",
}
SPLIT: dict[str, tuple[str, ...]] = {
    "engine/credentials.py": ("Credential", "Tls"),
    "engine/bus/connection.py": ("auth_options",),
}
"""Top-level definitions cut out of engine modules into nerve_client/credentials.py."""
MOVED_NAMES = {
    ("engine.credentials", "Credential"): "nerve_client.credentials",
    ("engine.credentials", "Tls"): "nerve_client.credentials",
    ("engine.bus.connection", "auth_options"): "nerve_client.credentials",
    **{("engine", m): "nerve_client" for m in MODULES},
}
"""(module, name) imported with `from module import name` -> the module that now holds it."""
SOURCE_DIRS = ("engine", "models", "training", "tests", "bench", "client/src")
TEXT_FILES = ("README.md",)
TEXT_GLOBS = ("widgets/*.js",)
WIDTH = 100
"""ruff's line-length: a rewritten comment or docstring line longer than this is wrapped."""
LAYOUT = "tests/test_layout.py"
"""Edited by exact replacements only (its planted trees spell old paths on purpose)."""

CREDENTIALS_HEAD = '''\
"""How a client authenticates to the broker: a credential file and TLS files, and the nats-py
connect options they make. The engine issues credentials (`engine.credentials`: roles, grants,
the embedded server's authorization block); a client only loads and presents one."""

from __future__ import annotations

import importlib.util
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nerve_client.errors import ConfigError
'''
"""Imports the cut definitions may need; ruff removes the ones they do not use."""

_MODULE_RE = re.compile(r"(?<![\w.])engine\.(" + "|".join(MODULES) + r")\b")
_NAME_RE = re.compile(
    r"(?<![\w.])engine\.(?:credentials\.(?=(?:Credential|Tls)\b)|bus\.connection\.(?=auth_options\b))"
)
_FACE_RE = re.compile(r"(?<![\w.])engine\.client\.(NerveClient|CrmContact|InterestSignal)\b")
"""What the package's face exports is quoted from there: `nerve_client.NerveClient`."""
_PATH_RE = re.compile(
    r"(?<![\w/.])engine/(?:(" + "|".join(m for m in MODULES if m != "events") + r")\.py\b|events\b)"
)


class Refused(Exception):
    """The tree is not as this script expects; nothing further is done."""


@dataclass
class Run:
    root: Path
    todo: list[str] = field(default_factory=list)
    touched: set[Path] = field(default_factory=set)

    def write(self, path: Path, text: str, what: str) -> None:
        if path.exists() and path.read_text() == text:
            return
        self.todo.append(f"{what}: {path.relative_to(self.root)}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if path.suffix == ".py":
            self.touched.add(path)


# --- 1. moves -----------------------------------------------------------------------------------


def move_modules(run: Run) -> None:
    for old, new in MOVES.items():
        src, dst = run.root / old, run.root / new
        if not src.exists() and dst.exists():
            continue
        if src.exists() and dst.exists():
            raise Refused(f"both {old} and {new} exist: merge them by hand first")
        if not src.exists():
            raise Refused(f"{old} is missing and {new} does not exist either")
        run.todo.append(f"git mv {old} {new}")
        for cache in src.rglob("__pycache__") if src.is_dir() else ():
            shutil.rmtree(cache)
        subprocess.run(["git", "mv", old, new], cwd=run.root, check=True)
        run.touched |= set(dst.rglob("*.py")) if dst.is_dir() else {dst}


# --- 2. the split -------------------------------------------------------------------------------


def _definitions(tree: ast.Module, names: tuple[str, ...], path: str) -> list[ast.stmt]:
    found = {
        node.name: node
        for node in tree.body
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
    }
    missing = [n for n in names if n not in found]
    if missing:
        raise Refused(f"{path}: no top-level definition of {', '.join(missing)}")
    return [found[n] for n in names]


def _span(node: ast.stmt) -> tuple[int, int]:
    """0-based [start, end) lines of a definition, decorators included."""
    start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    return start - 1, node.end_lineno or node.lineno


def _used_names(tree: ast.Module) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


def _insert_import(text: str, line: str) -> str:
    """`line` after the module's last top-level import."""
    tree = ast.parse(text)
    ends = [
        n.end_lineno or n.lineno for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)
    ]
    lines = text.splitlines(keepends=True)
    at = max(ends) if ends else 0
    return "".join([*lines[:at], line + "\n", *lines[at:]])


def _defined(path: Path, names: tuple[str, ...]) -> list[str]:
    tree = ast.parse(path.read_text())
    top = {
        n.name
        for n in tree.body
        if isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
    }
    return [n for n in names if n in top]


def split_credentials(run: Run) -> None:
    target = run.root / CLIENT / "credentials.py"
    remaining = [path for path, names in SPLIT.items() if _defined(run.root / path, names)]
    if not remaining:
        if not target.exists():
            raise Refused(f"{target}: missing, and the definitions it should hold are gone too")
        return
    if target.exists():
        raise Refused(f"{target} exists but {', '.join(remaining)} still define its names")
    if len(remaining) != len(SPLIT):
        raise Refused(f"half-done split: only {', '.join(remaining)} still define moved names")
    pieces, cut = [], {}
    for path, names in SPLIT.items():
        text = (run.root / path).read_text()
        lines = text.splitlines(keepends=True)
        nodes = _definitions(ast.parse(text), names, path)
        spans = sorted(_span(n) for n in nodes)
        pieces += ["".join(lines[a:b]).rstrip() + "\n" for a, b in spans]
        for a, b in reversed(spans):
            while b < len(lines) and not lines[b].strip():  # the blank lines after it
                b += 1
            del lines[a:b]
        kept = "".join(lines)
        needed = [n for n in names if n in _used_names(ast.parse(kept))]
        if needed:
            kept = _insert_import(kept, f"from nerve_client.credentials import {', '.join(needed)}")
        cut[path] = kept
    run.write(target, CREDENTIALS_HEAD + "\n\n" + "\n\n".join(pieces), "new module")
    for path, text in cut.items():
        run.write(run.root / path, text, "cut the client's definitions")


# --- 3. references ------------------------------------------------------------------------------


def _rewrite_import(node: ast.ImportFrom) -> list[str] | None:
    """`from m import a, b` as statements with the moved names taken from their new home."""
    if node.level or node.module is None:
        return None
    groups: dict[str, list[str]] = {}
    for alias in node.names:
        home = MOVED_NAMES.get((node.module, alias.name), node.module)
        spelled = alias.name + (f" as {alias.asname}" if alias.asname else "")
        groups.setdefault(home, []).append(spelled)
    if list(groups) == [node.module]:
        return None
    return [f"from {m} import {', '.join(names)}" for m, names in groups.items()]


def rewrite_imports(text: str, path: str) -> str:
    """Names imported from where they no longer live, taken from nerve_client instead."""
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        raise Refused(f"{path}: does not parse ({exc})") from None
    lines = text.splitlines(keepends=True)
    edits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (new := _rewrite_import(node)) is not None:
            first, last = lines[node.lineno - 1], lines[(node.end_lineno or node.lineno) - 1]
            if first[: node.col_offset].strip() or last[node.end_col_offset or 0 :].strip():
                raise Refused(f"{path}:{node.lineno}: an import sharing its line; split it")
            indent = first[: node.col_offset]
            body = "".join(f"{indent}{s}\n" for s in new)
            edits.append((node.lineno - 1, node.end_lineno or node.lineno, body))
    for a, b, body in sorted(edits, reverse=True):
        lines[a:b] = [body]
    return "".join(lines)


def _rewrite_line(line: str) -> str:
    new = _NAME_RE.sub("nerve_client.credentials.", line)
    new = _FACE_RE.sub(r"nerve_client.\1", new)
    new = _MODULE_RE.sub(r"nerve_client.\1", new)
    new = _PATH_RE.sub(lambda m: f"{CLIENT}/{m.group(1) + '.py' if m.group(1) else 'events'}", new)
    if new != line and new.lstrip().startswith("|"):
        new = _realign(line, new)
    return new


def _realign(old: str, new: str) -> str:
    """A table row keeps its width: the cell that grew gives back spaces before its `|`."""
    delta = len(new) - len(old)
    start = next((i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b), 0)
    bar = new.find("|", start)
    if bar < 0:
        return new
    pad = len(new[:bar]) - len(new[:bar].rstrip(" "))
    if delta > 0 and pad > delta:
        return new[: bar - delta] + new[bar:]
    if delta < 0:
        return new[:bar] + " " * -delta + new[bar:]
    return new


def rewrite_text(text: str, width: int | None = None) -> str:
    """Every reference to a moved module or name spelled at its new home. With `width`
    (Python files), a comment or docstring line pushed past it is wrapped."""
    lines = text.splitlines(keepends=True)
    changed = []
    for n, line in enumerate(lines):
        new = _rewrite_line(line)
        if new != line:
            lines[n] = new
            changed.append(n)
    if width is not None and changed:
        lines = _wrap(lines, changed, width)
    return "".join(lines)


def _prose_lines(lines: list[str]) -> tuple[set[int], dict[int, int]]:
    """0-based lines that are whole-line comments, and line -> last line of the multi-line
    string it lies inside (its opening line is code, so it is left out)."""
    comments, strings = set(), {}
    for tok in tokenize.generate_tokens(io.StringIO("".join(lines)).readline):
        if tok.type == tokenize.COMMENT and not tok.line[: tok.start[1]].strip():
            comments.add(tok.start[0] - 1)
        elif tok.type == tokenize.STRING and tok.end[0] > tok.start[0]:
            for n in range(tok.start[0], tok.end[0]):
                strings[n] = tok.end[0] - 1
    return comments, strings


_MARKERS = ("-", "*", "|", "#", ">", "`", '"""', "'''")
"""A docstring line starting so begins its own item: a wrapped tail does not join it."""


def _wrap_once(lines: list[str], n: int, width: int) -> int | None:
    """Wrap line `n` once; the tail joins the next line of its paragraph or makes a new line.
    Returns the line that now holds the tail; None for code (ruff format wraps that)."""
    comments, strings = _prose_lines(lines)
    body = lines[n].rstrip("\n")
    lead = body[: len(body) - len(body.lstrip())]
    if n in comments:
        lead += "# "
    elif n not in strings:
        return None
    cut = body.rfind(" ", len(lead), width + 1)
    if cut <= len(lead):
        raise Refused(f"cannot wrap a rewritten line: {body.strip()}")
    head, tail, nxt = body[:cut].rstrip(), body[cut + 1 :], n + 1
    following = lines[nxt] if nxt < len(lines) else ""
    indent = following[: len(following) - len(following.lstrip())]
    if n in comments:
        joins = nxt in comments and following.lstrip()[2:3].strip() != ""
        rest, indent = following.lstrip()[2:], indent + "# "
    else:
        joins = strings.get(nxt) == strings[n] and strings[n] != n
        joins = joins and not following.strip().startswith(_MARKERS)
        rest = following.strip()
    lines[n] = head + "\n"
    if joins and following.strip():
        lines[nxt] = f"{indent}{tail} {rest}\n"
    else:
        lines.insert(nxt, f"{lead}{tail}\n")
    return nxt


def _wrap(lines: list[str], changed: list[int], width: int) -> list[str]:
    """Wrap each changed prose line longer than `width` (code is left to ruff format)."""
    for n in sorted(changed, reverse=True):
        at: int | None = n
        while at is not None and len(lines[at].rstrip("\n")) > width:
            at = _wrap_once(lines, at, width)
    return lines


def rewrite_references(run: Run) -> None:
    for base in SOURCE_DIRS:
        for path in sorted((run.root / base).rglob("*.py")):
            rel = path.relative_to(run.root).as_posix()
            if rel == LAYOUT or "/." in rel or "__pycache__" in rel:
                continue
            text = path.read_text()
            new = rewrite_text(rewrite_imports(text, rel), width=WIDTH)
            run.write(path, new, "rewrite references")
    others = [run.root / f for f in TEXT_FILES] + [p for g in TEXT_GLOBS for p in run.root.glob(g)]
    for path in others:
        if path.exists():
            run.write(path, rewrite_text(path.read_text()), "rewrite references")
    leftovers = _leftovers(run.root)
    if leftovers:
        raise Refused("references the rewrite could not mend:\n  " + "\n  ".join(leftovers))


def _leftovers(root: Path) -> list[str]:
    """Spellings that would still reach a moved name through the engine."""
    bad = re.compile(
        r"from engine import .*\b(" + "|".join(MODULES) + r")\b"
        r"|\bcredentials\.(Credential|Tls)\b(?!\()|\bconnection\.auth_options\b"
    )
    found = []
    for base in SOURCE_DIRS:
        for path in sorted((root / base).rglob("*.py")):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if bad.search(code) and "nerve_client" not in code:
                    found.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    return found


# --- 4. configuration ---------------------------------------------------------------------------


def replace_once(run: Run, rel: str, edits: list[tuple[str, str]]) -> None:
    """Apply each (old, new): skipped if `new` is there already, refused if `old` is not."""
    path = run.root / rel
    text = path.read_text()
    for old, new in edits:
        if new in text:
            continue
        if text.count(old) != 1:
            raise Refused(f"{rel}: expected exactly one {old!r} (found {text.count(old)})")
        text = text.replace(old, new)
    run.write(path, text, "edit")


PYPROJECT = [
    (
        '[tool.setuptools.packages.find]\ninclude = ["engine*", "models*", "training*"]\n',
        "[tool.setuptools.packages.find]\n"
        "# nerve_client is also its own distribution, nerve-client (client/pyproject.toml);\n"
        "# the engine ships it from the same sources.\n"
        'where = [".", "client/src"]\n'
        'include = ["engine*", "models*", "training*", "nerve_client*"]\n'
        "\n[tool.setuptools.package-data]\n"
        'nerve_client = ["py.typed", "schemas/*.json"]\n',
    ),
    (
        'packages = ["engine", "models", "training"]\n',
        'packages = ["engine", "models", "training", "nerve_client"]\nmypy_path = "client/src"\n',
    ),
    (
        "[tool.ruff]\nline-length = 100\n",
        '[tool.ruff]\nline-length = 100\nsrc = [".", "client/src"]\n',
    ),
]
MAKEFILE = [
    (
        "ruff check engine models training tests bench\n",
        "ruff check engine models training client tests bench\n",
    ),
    (
        "ruff format --check engine models training tests bench\n",
        "ruff format --check engine models training client tests bench\n",
    ),
]
LAYOUT_EDITS = [
    (
        'FORBIDDEN = {"models": {"engine", "training"}, "engine": {"training"}, '
        '"training": set()}\n'
        'CHECKED = ("engine", "models", "training")\n',
        'CLIENT = "client/src/nerve_client"\n'
        '"""The client\'s own distribution (nerve-client): it imports nothing of the rest."""\n'
        "FORBIDDEN = {\n"
        '    "models": {"engine", "training"},\n'
        '    "engine": {"training"},\n'
        '    "training": set(),\n'
        '    CLIENT: {"engine", "models", "training"},\n'
        "}\n"
        'CHECKED = ("engine", "models", "training", CLIENT)\n',
    ),
    (
        'NATS_DOORS = ("engine/bus/", "engine/client.py")\n',
        'NATS_DOORS = ("engine/bus/", "client/src/nerve_client/client.py")\n',
    ),
    (
        '    parts = rel.removesuffix(".py").split("/")\n',
        '    parts = rel.removeprefix("client/src/").removesuffix(".py").split("/")\n',
    ),
    ('        if rel == "engine/subjects.py":\n', '        if rel == f"{CLIENT}/subjects.py":\n'),
    (
        "        (root / package).mkdir(exist_ok=True)\n",
        "        (root / package).mkdir(parents=True, exist_ok=True)\n",
    ),
    (
        "    # engine/client.py is the stand-alone client other teams' services import\n"
        '    allowed = {ROOT / "engine" / "bus", ROOT / "engine" / "client.py"}\n'
        '    for path in (ROOT / "engine").rglob("*.py"):\n',
        "    # nerve_client/client.py is the stand-alone client other teams' services import\n"
        '    allowed = {ROOT / "engine" / "bus", ROOT / CLIENT / "client.py"}\n'
        '    for path in [*(ROOT / "engine").rglob("*.py"), *(ROOT / CLIENT).rglob("*.py")]:\n',
    ),
    (
        '            "engine/client.py": "from nats.aio.client import Client\\n",\n',
        '            f"{CLIENT}/client.py": "from nats.aio.client import Client\\n",\n'
        '            f"{CLIENT}/x.py": "import nats\\n",\n',
    ),
    (
        '{"engine/x.py:1", "training/t.py:2", "models/m.py:2"}\n',
        "{\n"
        '        "engine/x.py:1",\n'
        '        "training/t.py:2",\n'
        '        "models/m.py:2",\n'
        '        f"{CLIENT}/x.py:1",\n'
        "    }\n",
    ),
    (
        '            "engine/subjects.py": "def f(u):',
        '            f"{CLIENT}/subjects.py": "def f(u):',
    ),
    (
        "outside engine/bus/ and engine/client.py.",
        "outside engine/bus/ and nerve_client/client.py.",
    ),
    ("outside engine/subjects.py (and,", "outside nerve_client/subjects.py (and,"),
    (
        '"nats is imported only in engine/bus/, engine/client.py"',
        '"nats is imported only in engine/bus/, nerve_client/client.py"',
    ),
    (
        'report("subjects are built only in engine/subjects.py", violations)',
        'report("subjects are built only in nerve_client/subjects.py", violations)',
    ),
]


def configure(run: Run) -> None:
    if "[tool.setuptools.package-data]" in (run.root / "pyproject.toml").read_text() and (
        "nerve_client = " not in (run.root / "pyproject.toml").read_text()
    ):
        raise Refused(
            "pyproject.toml has a [tool.setuptools.package-data] already: add "
            'nerve_client = ["py.typed", "schemas/*.json"] to it by hand'
        )
    replace_once(run, "pyproject.toml", PYPROJECT)
    replace_once(run, "Makefile", MAKEFILE)
    replace_once(run, LAYOUT, LAYOUT_EDITS)


# --- 5. tidy ------------------------------------------------------------------------------------


def ruff(root: Path) -> str:
    for candidate in (root / ".venv" / "bin" / "ruff", shutil.which("ruff")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise Refused("ruff not found (.venv/bin/ruff or on PATH): install the test extras first")


def tidy(run: Run) -> None:
    """Sort and format what this run touched, then check everything it may have touched (on
    every run: a rerun after mending by hand checks again)."""
    exe = ruff(run.root)
    files = sorted(str(p.relative_to(run.root)) for p in run.touched if p.exists())
    if files:
        subprocess.run([exe, "check", "-q", "--fix", "--select", "I,F401", *files], cwd=run.root)
        subprocess.run([exe, "format", "-q", *files], cwd=run.root, check=True)
    dirs = [d for d in SOURCE_DIRS if (run.root / d).is_dir()]
    if subprocess.run([exe, "check", "-q", *dirs], cwd=run.root).returncode:
        raise Refused(f"ruff check fails in {' '.join(dirs)} (above): mend by hand, run again")


def regenerate_schemas(run: Run) -> None:
    """The shipped JSON Schemas from the models as they are now (others may have changed one)."""
    venv = run.root / ".venv" / "bin" / "python"
    python = str(venv) if venv.exists() else sys.executable
    folder = run.root / CLIENT / "schemas"
    before = {p.name: p.read_text() for p in folder.glob("*.schema.json")}
    env = {**os.environ, "PYTHONPATH": str(run.root / "client" / "src")}
    done = subprocess.run(
        [python, "-m", "nerve_client.schemas"],
        cwd=run.root,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise Refused(f"python -m nerve_client.schemas failed:\n{done.stderr}")
    after = {p.name: p.read_text() for p in folder.glob("*.schema.json")}
    run.todo += [
        f"regenerated: {CLIENT}/schemas/{n}" for n in sorted(after) if before.get(n) != after[n]
    ]


def main(argv: list[str]) -> int:
    if argv:
        print("usage: python client/migrate.py   (from the repository root)", file=sys.stderr)
        return 2
    run = Run(Path.cwd())
    try:
        if 'name = "nerve"' not in (run.root / "pyproject.toml").read_text():
            raise Refused("run from the root of the Nerve repository")
        if not (run.root / CLIENT / "__init__.py").exists():
            raise Refused(f"{CLIENT}/__init__.py is missing: copy client/ in first")
        move_modules(run)
        split_credentials(run)
        rewrite_references(run)
        configure(run)
        tidy(run)
        regenerate_schemas(run)
    except (Refused, OSError, subprocess.CalledProcessError) as exc:
        print(f"migrate: {exc}", file=sys.stderr)
        return 1
    for line in run.todo:
        print("done: " + line)
    print(
        "migrate: nothing to do" if not run.todo else 'now run: .venv/bin/pip install -e ".[test]"'
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
