"""`ttspo serve`: the local page to browse the store, listen to pairs and label them
(thin over ttspo.builder.review.serve)."""

from __future__ import annotations

import ipaddress

import click

from ttspo.builder.core.errors import InputError


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but a loopback address needs --token.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="Port to bind (0: any free port, printed).")
@click.option("--token", envvar="TTSPO_SERVE_TOKEN", default=None, metavar="TEXT",
              help="Every request must carry TEXT (?token=, the X-Ttspo-Token header, "
                   "Authorization: Bearer, or the cookie the page sets); else 401. "
                   "Env: TTSPO_SERVE_TOKEN.")
@click.pass_context
def serve(ctx: click.Context, *, host: str, port: int, token: str | None) -> None:
    """Serve a page to browse generations, rollouts and sets, listen and label.

    Browse any table page by page with audio players, a DuckDB filter (confined
    like `ttspo sql`), sorting by any column, the text beside the transcript with
    the differences marked, and a pair's training dynamics. Listen: two samples of
    a set pair, blind and in random order; keys A, B, T (tie), S (skip) write a row
    of the `labels` table. Agreement: how often each metric prefers what people
    chose. Stop with Ctrl-C. See docs/serve.md.
    """
    import socket

    import uvicorn

    from ttspo.builder.core.store import Store
    from ttspo.builder.review.serve.app import make_app

    if token is not None and not token.strip():
        raise InputError("--token: empty")
    if token is None and not _loopback(host):
        raise InputError(f"--host {host}: not a loopback address; give --token too "
                         "(anyone who reaches the port could label)")
    store = Store(ctx.find_root().obj["store_path"])
    if not store.root.is_dir():
        raise InputError(f"store {store.root}: no such folder")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    query = "/?token=" + token if token else "/"
    click.echo(f"ttspo serve: http://{shown}:{bound}{query} (store {store.root}; Ctrl-C stops)",
               err=True)
    config = uvicorn.Config(make_app(store, token=token), log_level="warning", workers=1)
    uvicorn.Server(config).run(sockets=[sock])


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


COMMANDS = [serve]
