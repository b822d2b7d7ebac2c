"""Past four parameters, arguments are named: a call reads without the signature.

Every module of the package (the root ``__init__.py``, builder/, trainer/, sql/) is
parsed, no import runs. A def may take at most 4 positional-or-keyword parameters
(``self``/``cls`` not counted; the rest after ``*``), and a dataclass of more than 4
fields is ``kw_only=True``: ``Checkpointer(store, out, "dpo", ...)`` once took 13
positionally and a swapped pair of them would still have run.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_POSITIONAL = 4


def package_modules() -> list[Path]:
    return [ROOT / "__init__.py"] + sorted(
        p for folder in ("builder", "trainer", "sql") for p in (ROOT / folder).rglob("*.py"))


def positional(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    names = [a.arg for a in node.args.posonlyargs + node.args.args]
    return names[1:] if names[:1] in (["self"], ["cls"]) else names


def dataclass_decorator(node: ast.ClassDef) -> ast.expr | None:
    for d in node.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        if ast.unparse(target).split(".")[-1] == "dataclass":
            return d
    return None


def is_kw_only(decorator: ast.expr) -> bool:
    return isinstance(decorator, ast.Call) and any(
        k.arg == "kw_only" and isinstance(k.value, ast.Constant) and k.value.value is True
        for k in decorator.keywords)


def fields(node: ast.ClassDef) -> list[str]:
    return [s.target.id for s in node.body if isinstance(s, ast.AnnAssign)
            and isinstance(s.target, ast.Name) and "ClassVar" not in ast.unparse(s.annotation)]


def problems(path: Path, root: Path = ROOT) -> list[str]:
    where = path.relative_to(root)
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names = positional(node)
            if len(names) > MAX_POSITIONAL:
                out.append(f"{where}:{node.lineno} {node.name}() takes {len(names)} positional "
                           f"parameters ({', '.join(names)}); name those after the first "
                           f"{MAX_POSITIONAL} (put * before them)")
        elif isinstance(node, ast.ClassDef):
            decorator = dataclass_decorator(node)
            if decorator is not None and len(fields(node)) > MAX_POSITIONAL \
                    and not is_kw_only(decorator):
                out.append(f"{where}:{node.lineno} dataclass {node.name} has "
                           f"{len(fields(node))} fields; make it @dataclass(kw_only=True)")
    return out


def test_every_package_function_of_more_than_four_parameters_is_keyword_only():
    found = [p for path in package_modules() for p in problems(path)]
    assert not found, "\n".join(found)


def test_the_scan_sees_what_it_must_refuse(tmp_path):
    """The check itself: a wide def, a wide positional dataclass; methods' self and
    parameters after * are not counted."""
    module = tmp_path / "wide.py"
    module.write_text(
        "from dataclasses import dataclass\n"
        "def wide(a, b, c, d, e): ...\n"
        "def fine(a, b, c, d, *, e, f): ...\n"
        "class K:\n"
        "    def method(self, a, b, c, d): ...\n"
        "@dataclass(frozen=True)\n"
        "class Wide:\n    a: int\n    b: int\n    c: int\n    d: int\n    e: int\n"
        "@dataclass(kw_only=True)\n"
        "class Named:\n    a: int\n    b: int\n    c: int\n    d: int\n    e: int\n")
    found = problems(module, root=tmp_path)
    assert len(found) == 2, found
    assert found[0].startswith("wide.py:2 wide() takes 5 positional parameters (a, b, c, d, e)")
    assert found[1].startswith("wide.py:7 dataclass Wide has 5 fields")
