"""The fast tier (`pytest -m "not slow"`) imports every package module (issue 19).

Read from the source, not run: a package module counts as covered when a FAST test can
import it. A test is fast unless `pytest.mark.slow` appears in its module's
``pytestmark``, its class's, or its own decorators (a `pytest.param(..., marks=slow)`
case makes its whole function count as slow: the safe side). What a fast test can run:
its own body, its module's module-level code and non-test functions (fixtures,
helpers), and the same of each local module (``tests/*.py``) those import. An import
of ``ttspo.x`` there covers ``ttspo.x``; ``from ttspo.x import y`` covers ``ttspo.x``,
and ``ttspo.x.y`` where that is a module; ``importlib.import_module`` and
``pytest.importorskip`` with a literal name count too. The importing test must also
exercise the module: that is for review, this test only sees imports.

A second test checks the reading of markers against pytest's own, for every test item
this session collected, so a mark this reading cannot see fails here rather than
counting a slow test as fast.

Exempt: ``__main__`` modules (importing one runs the program; they are run as
``python -m`` in subprocess tests) and packages whose ``__init__.py`` holds nothing
but a docstring (nothing to exercise). Packages with code (``ttspo`` itself, the
registry; ``ttspo.builder.scoring``, the backend loaders) are required.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
STAGES = ("builder", "trainer", "sql")  # as setup.py finds them


# ------------------------------------------------------------ the package's modules
def package_modules() -> dict[str, Path]:
    """Every module setup.py installs, by its ``ttspo.`` name."""
    found = ["", *find_packages(str(ROOT), include=[f"{t}{tail}" for t in STAGES
                                                    for tail in ("", ".*")])]
    modules = {}
    for package in found:
        folder = ROOT.joinpath(*package.split(".")) if package else ROOT
        name = f"ttspo.{package}" if package else "ttspo"
        for path in sorted(folder.glob("*.py")):
            if path == ROOT / "setup.py":
                continue
            modules[name if path.stem == "__init__" else f"{name}.{path.stem}"] = path
    return modules


def exempt(name: str, path: Path) -> bool:
    if path.stem == "__main__":
        return True
    if path.stem == "__init__":
        body = ast.parse(path.read_text()).body
        return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
                   for n in body)
    return False


# ------------------------------------------------------------------ reading the tests
def is_slow_mark(node: ast.AST | None) -> bool:
    """Whether ``pytest.mark.slow`` is written anywhere in an expression."""
    return node is not None and any(
        isinstance(n, ast.Attribute) and n.attr == "slow"
        and isinstance(n.value, ast.Attribute) and n.value.attr == "mark"
        for n in ast.walk(node))


def marks_of(body: list[ast.stmt]) -> ast.AST | None:
    for node in body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            return node.value
    return None


def collected(tree: ast.Module):
    """(function, its class or None) for each test pytest would collect by name."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
            yield node, None
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name.startswith("test"):
                    yield item, node


@cache
def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def slow_tests(path: Path) -> dict[str, bool]:
    """Test name (``Class::test`` in a class) -> whether it is marked slow."""
    tree = parsed(path)
    module_slow = is_slow_mark(marks_of(tree.body))
    out = {}
    for fn, cls in collected(tree):
        slow = module_slow or any(is_slow_mark(d) for d in fn.decorator_list)
        if cls is not None:
            slow = slow or is_slow_mark(marks_of(cls.body)) or any(
                is_slow_mark(d) for d in cls.decorator_list)
        out[f"{cls.name}::{fn.name}" if cls else fn.name] = slow
    return out


def imported(nodes, modules: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(ttspo modules, local test-folder modules) that the statements import."""
    ttspo, local = set(), set()

    def add(name: str):
        if name == "ttspo" or name.startswith("ttspo."):
            ttspo.add(name)
        elif (TESTS / f"{name}.py").exists():
            local.add(name)

    for top in nodes:
        for node in ast.walk(top):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                add(node.module)
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in modules:
                        add(f"{node.module}.{alias.name}")
            elif (isinstance(node, ast.Call) and node.args
                  and isinstance(node.args[0], ast.Constant)
                  and isinstance(node.args[0].value, str)
                  and (getattr(node.func, "attr", None) or getattr(node.func, "id", None))
                  in ("import_module", "importorskip")):
                add(node.args[0].value)
    return ttspo, local


def shared_code(tree: ast.Module) -> list[ast.stmt]:
    """A module's statements other than its test functions (fixtures, helpers, imports)."""
    tests = {id(fn) for fn, _ in collected(tree)}
    out = []
    for node in tree.body:
        if id(node) in tests:
            continue
        if isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            out.extend(item for item in node.body if id(item) not in tests)
        else:
            out.append(node)
    return out


def fast_imports(modules: dict[str, Path]) -> dict[str, list[str]]:
    """Package module -> the test files whose fast tests can import it."""
    by = {}

    def credit(names, who):
        for name in names:
            by.setdefault(name, []).append(who)

    for path in sorted(TESTS.glob("test_*.py")):
        tree = parsed(path)
        slow = slow_tests(path)
        fast = [fn for fn, cls in collected(tree)
                if not slow[f"{cls.name}::{fn.name}" if cls else fn.name]]
        if not fast:
            continue
        ttspo, local = imported(shared_code(tree) + fast, modules)
        credit(ttspo, path.name)
        seen = set()
        while local - seen:  # local modules' shared code, transitively
            name = min(local - seen)
            seen.add(name)
            more_ttspo, more_local = imported(shared_code(parsed(TESTS / f"{name}.py")), modules)
            credit(more_ttspo, f"{path.name} (via {name}.py)")
            local |= more_local
    return by


# ------------------------------------------------------------------------- the tests
def test_every_package_module_has_a_fast_test_that_imports_it():
    modules = package_modules()
    assert len(modules) > 80 and "ttspo.trainer.run.checkpoints" in modules
    assert "ttspo.builder.sets.recipes" in modules and "ttspo" in modules
    covered = fast_imports(modules)
    missing = [name for name, path in modules.items()
               if not exempt(name, path) and name not in covered]
    assert not missing, ("no fast test imports these package modules (add one, or drop "
                         "its slow mark):\n  " + "\n  ".join(missing))


def test_the_exemptions_are_main_modules_and_docstring_only_packages():
    modules = package_modules()
    names = sorted(name for name, path in modules.items() if exempt(name, path))
    assert "ttspo" not in names and "ttspo.builder.scoring" not in names  # code: required
    assert "ttspo.builder.cli.__main__" in names and "ttspo.trainer.__main__" in names
    assert all(name.endswith("__main__") or modules[name].name == "__init__.py"
               for name in names)


def test_the_reading_of_slow_marks_agrees_with_pytest(request):
    """Every test item this session collected (all of them in a full run, the fast ones
    under -m "not slow") is slow here exactly when pytest sees a slow marker on it."""
    checked = 0
    for item in request.session.items:
        path = Path(str(item.path))
        if path.parent != TESTS or not path.name.startswith("test_"):
            continue
        cls = item.cls.__name__ + "::" if item.cls else ""
        static = slow_tests(path)[cls + item.originalname]
        assert static == (item.get_closest_marker("slow") is not None), item.nodeid
        checked += 1
    assert checked >= 1  # this test itself at least


def test_the_reading_of_imports():
    modules = package_modules()
    src = ("import ttspo\nimport ttspo.builder.core.store as s\n"
           "from ttspo.builder.sets import recipes, build_set\n"
           "from ttspo.trainer.run.config import load_config\n"
           "import importlib\nimportlib.import_module('ttspo.trainer.grpo.loop')\n"
           "import train_helpers\n")
    ttspo, local = imported(ast.parse(src).body, modules)
    assert ttspo == {"ttspo", "ttspo.builder.core.store", "ttspo.builder.sets",
                     "ttspo.builder.sets.recipes", "ttspo.trainer.run.config",
                     "ttspo.trainer.grpo.loop"}
    assert local == {"train_helpers"}
    marks = ast.parse("import pytest\npytestmark = [pytest.mark.usefixtures('x'), "
                      "pytest.mark.slow]\n@pytest.mark.slow\ndef test_a(): pass\n"
                      "def test_b(): pass\n")
    assert is_slow_mark(marks_of(marks.body))
    assert [is_slow_mark(d) for fn, _ in collected(marks) for d in fn.decorator_list] \
        == [True]
