"""Run a ttspo command as another user (nobody), to meet real permission errors.

The suite runs as root, for whom every file is writable. A 'spawn' child imports
everything a command needs while still root (the interpreter lives under /root,
which nobody cannot read), then drops to uid/gid 65534 and runs the command
in-process through click's CliRunner. (Not a mock: the kernel refuses the writes.)
"""

from __future__ import annotations

import multiprocessing
import os

NOBODY = 65534


def _child(args: list[str], tmpdir: str | None, queue) -> None:
    import tempfile

    if tmpdir is not None:
        os.environ["TMPDIR"] = tmpdir
        tempfile.tempdir = None
    import csv, importlib.readers, importlib.resources, json  # noqa: E401,F401
    import duckdb, lance, pyarrow.parquet, torch, tqdm  # noqa: E401,F401  (export saves codes with torch)
    import ttspo.builder.cli.main as main
    import ttspo.builder.core.query, ttspo.builder.ingest.nemo, ttspo.builder.ingest.run  # noqa: E401,F401
    import ttspo.builder.sets.build, ttspo.builder.sets.export, ttspo.builder.sets.recipes  # noqa: E401,F401
    from ttspo.builder.sets.recipes import builtin_names, load_recipe

    for name in builtin_names():
        load_recipe(name)
    from click.testing import CliRunner

    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    result = CliRunner().invoke(main.cli, args)
    queue.put((result.exit_code, result.stdout, result.stderr,
               None if isinstance(result.exception, (SystemExit, type(None))) else repr(result.exception)))


def run_as_nobody(args: list[str], tmpdir: str | None = None) -> tuple[int, str, str, str | None]:
    """(exit code, stdout, stderr, exception other than SystemExit) of `ttspo ARGS` as nobody."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(list(args), tmpdir, queue))
    proc.start()
    try:
        return queue.get(timeout=120)
    finally:
        proc.join(30)


def open_to_all(root) -> None:
    """Every folder under ROOT (and ROOT) readable and traversable by all, files readable."""
    os.chmod(root, 0o755)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)
