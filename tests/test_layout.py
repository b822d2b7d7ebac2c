"""The layout is the architecture: stages import only earlier stages, never a CLI.

Order (the tree reads the same): the builder, the data half, which never imports
the trainer: builder.core < builder.prompts < builder.ingest < builder.scoring <
builder.sets < builder.analysis < builder.review < builder.api < builder.cli; then the trainer, in
rooms: trainer.run < trainer.policy < trainer.dpo < trainer.generate <
trainer.grpo < trainer.api < trainer.demo < trainer.cli. The command line and
ttspo.Store are assembled from both halves by the registry in ttspo/__init__.py,
which names modules as text. Only a CLI module imports a CLI module. Every module
of builder/, trainer/ and sql/ is parsed (no import runs), and every import
statement counts, function-level ones included: a lazy import of a later stage is
still a dependency on it.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("builder", "trainer", "sql")
STAGES = ("ttspo.builder.core", "ttspo.builder.prompts", "ttspo.builder.ingest",
          "ttspo.builder.scoring", "ttspo.builder.sets", "ttspo.builder.analysis",
          "ttspo.builder.review", "ttspo.builder.api", "ttspo.builder.cli",
          "ttspo.trainer.run", "ttspo.trainer.policy", "ttspo.trainer.dpo",
          "ttspo.trainer.generate", "ttspo.trainer.grpo", "ttspo.trainer.api",
          "ttspo.trainer.demo", "ttspo.trainer.cli")
CLIS = ("ttspo.builder.cli", "ttspo.trainer.cli")
LAST = len(STAGES) - 1
# Our own top-level folders: importing them bare only works with the repo root on
# sys.path (a source checkout), never from an installed wheel.
BARE = {"builder", "trainer", "sql", "tests", "bench"}
# Calls whose first argument names a package as a string.
NAMED = {"files", "import_module", "resource_filename", "resource_string"}


def module_name(path: Path) -> str:
    parts = ["ttspo", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage(name: str) -> int | None:
    """Index of the stage NAME belongs to; None for the packages above the stages
    (ttspo, ttspo.builder) and for ttspo.sql (recipes, no code)."""
    if name.rsplit(".", 1)[-1] == "__main__":
        return LAST
    for i, prefix in enumerate(STAGES):
        if name == prefix or name.startswith(prefix + "."):
            return i
    return None


def sources() -> dict[str, Path]:
    files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    return {module_name(p): p for p in [ROOT / "__init__.py", *files]}


MODULES = sources()


def imports(name: str, path: Path) -> list[tuple[int, str, bool]]:
    """(line, imported name, at module level) for every import in the file, with
    relative imports resolved and `from pkg import mod` resolved to the module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    top = {id(node) for node in tree.body}
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.append((node.lineno, full if full in MODULES else base, id(node) in top))
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in NAMED):
            out.append((node.lineno, node.args[0].value, id(node) in top))
    return out


def own(name: str) -> bool:
    return name == "ttspo" or name.startswith("ttspo.")


def is_cli(name: str) -> bool:
    return name.rsplit(".", 1)[-1] == "__main__" or any(
        name == cli or name.startswith(cli + ".") for cli in CLIS)


def layering_errors(modules: dict[str, Path]) -> list[str]:
    errors = []
    for name, path in modules.items():
        rel = path.relative_to(ROOT)
        mine = stage(name)
        for line, target, top in imports(name, path):
            where = f"{rel}:{line}: {name} imports {target}"
            if target.split(".")[0] in BARE:
                errors.append(f"{where} (a bare name: import ttspo.{target})")
            elif not own(target):
                continue
            elif name == "ttspo" and top and target != "ttspo":
                errors.append(f"{where} at import time (import ttspo must stay light)")
            elif mine is not None and (stage(target) or 0) > mine:
                errors.append(f"{where}, a later stage ({STAGES[stage(target)]})")
            elif is_cli(target) and not is_cli(name):
                errors.append(f"{where}, a command line (only a CLI module imports one)")
    return sorted(errors, key=lambda e: (e.split(":")[0], int(e.split(":")[1])))


def graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> our modules it imports. The root package is left out: everything
    may read ttspo.__version__, and its own imports are lazy (checked above)."""
    return {name: {t for _, t, _ in imports(name, path) if t in modules and t not in ("ttspo", name)}
            for name, path in modules.items() if name != "ttspo"}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_module_is_parsed():
    # The walk sees every stage that exists, and modules at depth (function-level
    # imports of later stages would hide in them).
    assert "ttspo.builder.core.store" in MODULES
    assert "ttspo.builder.cli.__main__" in MODULES
    assert "ttspo.trainer.policy.codec" in MODULES
    assert {stage(n) for n in MODULES} >= {0, 1, 2, 3, 4, 5, 7, 8}


def test_no_module_imports_a_later_stage_the_cli_or_a_bare_name():
    assert layering_errors(MODULES) == []


def test_no_import_cycle_between_modules():
    assert cycles(graph(MODULES)) == []


# ------------------------------------------------ the checks themselves can fail
@pytest.fixture
def fake_modules(tmp_path, monkeypatch):
    """Write modules into a scratch tree shaped like the repo and check that."""
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "ROOT", tmp_path)

    def write(files: dict[str, str]) -> dict[str, Path]:
        for rel, text in files.items():
            path = tmp_path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        found = {module_name(p): p for p in sorted(tmp_path.rglob("*.py"))}
        monkeypatch.setattr(this, "MODULES", found)
        return found

    return write


def test_bad_imports_are_reported(fake_modules):
    modules = fake_modules({
        "__init__.py": "def __getattr__(n):\n    from ttspo.builder.api import Store\n",
        "builder/__init__.py": "",
        "builder/core/__init__.py": "",
        "builder/core/store.py": "from ttspo import __version__\n"
                                 "def f():\n    from ttspo.builder.sets import build\n",
        "builder/core/query.py": "from importlib.resources import files\nfiles('sql')\n",
        "builder/sets/__init__.py": "",
        "builder/sets/build.py": "from ..core import store\nfrom builder.core import query\n"
                                 "def f():\n    from ttspo.trainer.dpo import loop\n",
        "builder/cli/__init__.py": "",
        "builder/cli/main.py": "from ttspo.builder.sets import build\n",
        "trainer/dpo/__init__.py": "",
        "trainer/dpo/loop.py": "",
        "trainer/demo/__init__.py": "",
        "trainer/demo/run.py": "import ttspo.builder.cli.main\n",
        "trainer/cli/__init__.py": "",
        "trainer/cli/train.py": "from ttspo.builder.cli import main\n",
    })
    assert layering_errors(modules) == [
        "builder/core/query.py:2: ttspo.builder.core.query imports sql "
        "(a bare name: import ttspo.sql)",
        "builder/core/store.py:3: ttspo.builder.core.store imports ttspo.builder.sets.build, "
        "a later stage (ttspo.builder.sets)",
        "builder/sets/build.py:2: ttspo.builder.sets.build imports builder.core "
        "(a bare name: import ttspo.builder.core)",
        "builder/sets/build.py:4: ttspo.builder.sets.build imports ttspo.trainer.dpo.loop, "
        "a later stage (ttspo.trainer.dpo)",
        "trainer/demo/run.py:1: ttspo.trainer.demo.run imports ttspo.builder.cli.main, "
        "a command line (only a CLI module imports one)",
    ]


def test_an_eager_import_in_the_root_package_is_reported(fake_modules):
    modules = fake_modules({"__init__.py": "from ttspo.builder.api import Store\n",
                            "builder/api.py": ""})
    assert layering_errors(modules) == [
        "__init__.py:1: ttspo imports ttspo.builder.api at import time (import ttspo must stay light)"]


def test_cycles_are_found_and_relative_imports_resolved(fake_modules):
    modules = fake_modules({
        "builder/ingest/__init__.py": "",
        "builder/ingest/a.py": "from . import b\n",
        "builder/ingest/b.py": "def f():\n    from ttspo.builder.ingest.c import x\n",
        "builder/ingest/c.py": "from .a import y\nimport ttspo.builder.ingest.d\n",
        "builder/ingest/d.py": "",
    })
    assert cycles(graph(modules)) == [
        ["ttspo.builder.ingest.a", "ttspo.builder.ingest.b", "ttspo.builder.ingest.c"]]
