"""The docs match the code: the generated pages are current, every command, option
and config key is documented, the commands the pages show exist with the options
they use, and every relative link (and anchor) points somewhere.

The pages docs/cli.md and docs/config.md are written by docs/generate.py (loaded
here by path: docs/ is not a package)."""

from __future__ import annotations

import glob
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
SETUP_COMMANDS = ("bash .ci/setup && .venv/bin/ttspo demo",
                  "bash .ci/setup tests && .venv/bin/python -m pytest")


def load_generator():
    spec = importlib.util.spec_from_file_location("ttspo_docs_generate", DOCS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gen = load_generator()


@pytest.fixture(scope="module")
def commands():
    return gen.commands()


def sections(text: str) -> dict[str, str]:
    """{heading text: the text under it} for the `## ` headings of a page."""
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def option_names(cmd: click.Command) -> set[str]:
    """Every spelling of every option of CMD, --help included; hidden options (the
    internal plumbing `score --workers` passes its worker processes) are not shown."""
    params = cmd.get_params(click.Context(cmd))
    return {o for p in params if isinstance(p, click.Option) and not p.hidden
            for o in (*p.opts, *p.secondary_opts)}


# ------------------------------------------------------------ generated pages

def test_generated_pages_are_current():
    assert gen.stale() == [], "run .venv/bin/python docs/generate.py"


def test_generate_check_names_a_stale_page(tmp_path, monkeypatch, capsys):
    for name in gen.pages():
        (tmp_path / name).write_text((DOCS / name).read_text() + "edited\n")
    monkeypatch.setattr(gen, "DOCS", tmp_path)
    assert gen.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert all(f"docs/{name} is stale" in err for name in gen.pages())


# ------------------------------------------------------------ the CLI reference

def test_every_command_and_option_is_in_cli_md(commands):
    """Each command has its section, and the section's option lines are exactly the
    command's options: one deleted, or one the command lacks, fails."""
    page = sections((DOCS / "cli.md").read_text(encoding="utf-8"))
    wrong = [f"a section for no command: '## {p}'" for p in set(page) - {p for p, _, _ in commands}]
    for path, cmd, _ in commands:
        if path not in page:
            wrong.append(f"no section '## {path}'")
            continue
        listed = set()
        for line in page[path].split("Options:", 1)[-1].splitlines():
            m = re.match(r"^  (-\w)?(?:, )?(--[\w-]+)?(?:\s*/\s*(--[\w-]+))?", line)
            listed |= {o for o in (m.groups() if m else ()) if o}
        for name in sorted(option_names(cmd) - listed):
            wrong.append(f"'## {path}' lacks the option {name}")
        for name in sorted(listed - option_names(cmd)):
            wrong.append(f"'## {path}' lists {name}, not an option of the command")
    assert not wrong, "docs/cli.md:\n" + "\n".join(wrong)


# ------------------------------------------------------------ the config reference

def config_rows() -> list[str]:
    text = (DOCS / "config.md").read_text(encoding="utf-8")
    return re.findall(r"^\| `([\w.]+)` \|", text, flags=re.M)


def test_every_config_key_is_in_config_md():
    root = gen.load(gen.CONFIG)
    keys = [f"{s.name}.{f.name}" for s in gen.dataclasses.fields(root)
            for f in gen.dataclasses.fields(gen.typing.get_type_hints(root)[s.name])]
    rows = config_rows()
    assert sorted(rows) == sorted(keys), (
        f"docs/config.md: missing {sorted(set(keys) - set(rows))}, "
        f"not config keys {sorted(set(rows) - set(keys))}")
    assert len(rows) == len(set(rows))


FILE_SUFFIXES = (".pt", ".json", ".jsonl", ".yaml", ".md")


def test_config_keys_named_in_the_pages_exist():
    """`-o section.key=...`, and `section.key` in backticks, name a key of the config
    (or a free-form policy.model.* key, or an old key still read: old_keys.OLD_KEYS):
    a renamed key fails here."""
    from ttspo.trainer.run.old_keys import OLD_KEYS

    keys = set(config_rows()) | set(OLD_KEYS)
    sections_ = "|".join(sorted({k.split(".")[0] for k in keys}))
    wrong = []
    for page in PAGES:
        if page.name in gen.pages():
            continue
        text = page.read_text(encoding="utf-8")
        named = re.findall(r"-o ([a-z_]+\.[\w.]+)=", text)
        named += re.findall(rf"`-?o? ?((?:{sections_})\.[a-z_][\w.]*)", text)
        for key in named:
            if key.endswith(FILE_SUFFIXES):  # a file (`policy.pt`), not a key
                continue
            if not (key in keys or key.startswith(("policy.model.", "section."))):
                wrong.append(f"{page.relative_to(ROOT)}: {key}")
    assert not wrong, "not config keys:\n" + "\n".join(wrong)


# ------------------------------------------------------------ commands shown in the pages

def shown_commands(text: str) -> list[str]:
    """Every `ttspo ...` command line in a page: code-block lines (with their `\\`
    continuations) and inline code spans."""
    out = []
    blocks = re.findall(r"^(?: {4,}|\t)[^\n]*$|```.*?```", text, flags=re.M | re.S)
    joined = re.sub(r"\\\n\s*", " ", "\n".join(blocks))
    for line in joined.splitlines():
        line = line.strip().removeprefix("$ ")
        for m in re.finditer(r"(?:(?:^|[;&|] *)ttspo|-m ttspo\.builder\.cli --)\s+(.*)", line):
            out.append(m.group(1))
        for m in re.finditer(r"-m ttspo\.trainer\s+(.*)", line):  # its options are `train`'s
            out.append("train " + re.sub(r"--store \S+ ?", "", m.group(1)))  # it takes --store
    prose = re.sub(r"^ {4,}.*$", "", re.sub(r"```.*?```", "", text, flags=re.S), flags=re.M)
    for span in re.findall(r"`([^`\n]+)`", prose):
        if span.startswith("ttspo "):
            out.append(span[len("ttspo "):])
    return out


def check_shown(words: str, root: click.Group) -> str | None:
    """None when WORDS (a command line after `ttspo`) names a command and only its
    options; else what is wrong."""
    try:
        tokens = shlex.split(words.split(" # ")[0].split("  #")[0], comments=False)
    except ValueError:
        tokens = words.split()
    cmd, path, i = root, ["ttspo"], 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith("--") and not isinstance(cmd, click.Group):
            break
        if tok.startswith("-"):  # the root group's own options (--store DIR)
            name = tok.split("=")[0]
            if name not in option_names(cmd) | {"--help"}:
                return f"{' '.join(path)} has no option {name}"
            i += 1 if "=" in tok or name in ("--help", "--version") else 2
            continue
        if isinstance(cmd, click.Group):
            sub = cmd.commands.get(tok)
            if sub is None:
                if tok.isupper() or not tok.isidentifier() and "-" not in tok:
                    return None  # a placeholder such as ... or COMMAND
                return f"{' '.join(path)} has no command {tok}"
            cmd, path = sub, path + [tok]
            i += 1
            continue
        break
    for tok in tokens[i:]:
        tok = tok.lstrip("[")
        if tok.startswith("--") and len(tok) > 2:
            name = re.split(r"[=\[\]]", tok)[0]
            if name not in option_names(cmd) | {"--help"}:
                return f"{' '.join(path)} has no option {name}"
    return None


def test_commands_shown_in_the_pages_exist():
    root = gen.load(gen.CLI)
    wrong = []
    for page in PAGES:
        if page.name in gen.pages():
            continue
        for words in shown_commands(page.read_text(encoding="utf-8")):
            problem = check_shown(words, root)
            if problem:
                wrong.append(f"{page.relative_to(ROOT)}: `ttspo {words}`: {problem}")
    assert not wrong, "\n".join(wrong)


def test_a_wrong_command_is_caught():
    root = gen.load(gen.CLI)
    assert check_shown("train dpo prefs --out runs/a -o optim.lr=1e-4", root) is None
    assert check_shown("--store ST generate --run a --checkpoint c.pt", root) is None
    assert "no option --fake" in check_shown("build pareto --name p --fake 1", root)
    assert "no command trian" in check_shown("trian dpo prefs", root)
    assert "no option --nope" in check_shown("demo [--nope DIR]", root)


# ------------------------------------------------------------ README and links

def test_readme_has_the_setup_commands():
    text = README.read_text(encoding="utf-8")
    for command in SETUP_COMMANDS:
        assert f"\n    {command}\n" in text, command
    assert SETUP_COMMANDS[1] in (ROOT / ".ci" / "run").read_text()


def test_readme_is_short():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 200


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of PAGE's headings (a repeated heading gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    for heading in re.findall(r"^#{1,6} (.+?)\s*#*$", text, flags=re.M):
        slug = gen.slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


def test_every_relative_link_points_somewhere():
    broken = []
    for page in PAGES:
        for target in links(page):
            if re.match(r"^[a-z]+:", target):
                continue  # https:, mailto:
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_every_page_is_listed_in_the_index():
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    for page in DOCS.glob("*.md"):
        if page.name != "README.md":
            assert f"]({page.name})" in index, f"docs/README.md does not list {page.name}"


def test_repository_paths_named_in_the_pages_exist():
    """A `builder/...`, `trainer/...`, `sql/...` path in backticks names a file or
    folder of the repository (a module moved makes this fail)."""
    missing = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for path in re.findall(r"`((?:builder|trainer|sql|bench|tests|docs|\.ci)/[\w./*-]*)`", text):
            if not glob.glob(str(ROOT / path)):
                missing.append(f"{page.relative_to(ROOT)}: {path}")
    assert not missing, "\n".join(missing)


def test_modules_named_in_the_pages_exist():
    """`-m ttspo.x.y` and `python -m ttspo.x.y` name an importable module."""
    missing = []
    for page in PAGES:
        for module in set(re.findall(r"-m (ttspo(?:\.\w+)*)", page.read_text(encoding="utf-8"))):
            if importlib.util.find_spec(module) is None:
                missing.append(f"{page.relative_to(ROOT)}: {module}")
    assert not missing, "\n".join(missing)
