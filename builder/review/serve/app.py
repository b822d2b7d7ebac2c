"""The Starlette app behind `ttspo serve`: the page, its JSON API, audio, labels.

Routes (all behind the token when there is one):
  GET  /                       the page (static/index.html)
  GET  /static/{file}          its script and style
  GET  /api/tables             tables the page can browse
  GET  /api/rows               a page of a table: table, where, sort, desc, page, size
  GET  /api/dynamics           a pair's pair_dynamics rows: set, pair_id
  GET  /api/audio              a row's audio (Range requests): table, id
  GET  /api/pair               a blind pair to judge: set, where, seed, labeler
  POST /api/labels             one judgement (JSON), written by the one writer
  GET  /api/agreement          each metric's agreement with the labels: set
Errors are a 4xx with a one-line JSON body {"error": "..."}.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import secrets
from importlib.resources import files
from typing import Any

from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ttspo.builder.core.errors import InputError, TtspoError, first_line
from ttspo.builder.core.store import Store, make_lineage
from ttspo.builder.review.serve import audio, browse, labeling

TOKEN_COOKIE = "ttspo_token"
LABELER_COOKIE = "ttspo_labeler"
MAX_BODY = 64 * 1024
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# Nothing inline runs, nothing loads from elsewhere: stored text rendered by mistake
# as HTML could still not run a script.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "media-src 'self'; img-src 'self' data:; object-src 'none'; "
                               "frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": first_line(ValueError(reason))}, status_code=status)


def _status(exc: TtspoError) -> int:
    return 404 if isinstance(exc, audio.NotFound) else 400


class Guard:
    """ASGI middleware: the token (when set) on every request, security headers on
    every response. The token may come as ``Authorization: Bearer T``, the header
    ``X-Ttspo-Token: T``, the query ``?token=T`` or the cookie the page sets."""

    def __init__(self, app, token: str | None):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refused = self._refusal(HTTPConnection(scope))
        if refused is not None:
            return await refused(scope, receive, send)

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()
                         if k.encode() not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)

    def _refusal(self, conn: HTTPConnection) -> Response | None:
        if self.token is not None and not self._allowed(conn):
            return error(401, "missing or wrong token (?token=, X-Ttspo-Token or "
                              "Authorization: Bearer)")
        host = conn.headers.get("host", "")
        if self.token is None and _host_name(host) not in LOOPBACK_NAMES:
            # Without a token only loopback names: another site's page that a DNS name
            # rebound to 127.0.0.1 must not read the store through the visitor's browser.
            return error(403, f"host {host[:60]!r} is not a loopback name; serve with --token "
                              "to be reached by other names")
        origin = conn.headers.get("origin")
        if conn.scope["method"] not in SAFE_METHODS and origin is not None \
                and origin.split("://", 1)[-1] != host:
            # A form another site posts to this page (cross-site request forgery).
            return error(403, f"origin {origin[:60]!r} is not this page's")
        return None

    def _allowed(self, conn: HTTPConnection) -> bool:
        auth = conn.headers.get("authorization", "")
        offered = [auth[7:] if auth.lower().startswith("bearer ") else None,
                   conn.headers.get("x-ttspo-token"), conn.query_params.get("token"),
                   conn.cookies.get(TOKEN_COOKIE)]
        return any(t is not None and hmac.compare_digest(t.encode(), self.token.encode())
                   for t in offered)


def _host_name(host: str) -> str:
    """The name of a Host header, without its port ([::1]:8765 -> [::1])."""
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def make_app(store: Store, *, token: str | None = None) -> Starlette:
    """The page's app over STORE; with TOKEN, every request must carry it."""
    writer: list[labeling.LabelWriter] = []
    lineage = make_lineage("serve", {"labeler": "page"})

    def label_writer() -> labeling.LabelWriter:
        if not writer:
            writer.append(labeling.LabelWriter(store, lineage))
        return writer[0]

    async def index(request: Request) -> Response:
        page = files("ttspo.builder.review.serve").joinpath("static/index.html").read_text()
        response = Response(page, media_type="text/html")
        given = request.query_params.get("token")
        if token is not None and given is not None:  # audio elements send cookies, not headers
            response.set_cookie(TOKEN_COOKIE, given, httponly=True, samesite="strict")
        return response

    def tables(request: Request) -> Response:
        rows = [{"name": t.name, "kind": t.kind, "id_column": t.id_column,
                 "columns": list(t.columns), "numeric": list(t.numeric)}
                for t in browse.browsable(store)]
        return JSONResponse({"tables": rows, "dynamics": store.exists(browse.DYNAMICS),
                             "labels": store.exists(browse.LABELS), "store": str(store.root)})

    def rows(request: Request) -> Response:
        p = request.query_params
        return strict_json(browse.page(
            store, _text(p, "table"), where=p.get("where", ""), sort=p.get("sort") or None,
            descending=p.get("desc", "0") in ("1", "true"), number=_int(p, "page", 0),
            size=_int(p, "size", 20)))

    def dynamics(request: Request) -> Response:
        p = request.query_params
        return strict_json(browse.dynamics(store, _text(p, "set"), _text(p, "pair_id")))

    def audio_file(request: Request) -> Response:
        p = request.query_params
        return audio.audio_response(store, _text(p, "table"), _text(p, "id"),
                                    request.headers.get("range"))

    def pair(request: Request) -> Response:
        p = request.query_params
        seed = _int(p, "seed", None)
        return strict_json(labeling.draw_pair(
            store, _text(p, "set"), where=p.get("where", ""), labeler=p.get("labeler"),
            seed=secrets.randbits(32) if seed is None else seed))

    async def label(request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            # Only JSON: a browser sends it across sites only after a CORS preflight,
            # which this server never grants.
            return error(415, "label: send the judgement as application/json")
        body = await request.body()
        if len(body) > MAX_BODY:
            return error(413, f"label: body over {MAX_BODY} bytes")
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return error(400, "label: the body is not JSON")
        judgement = labeling.parse_judgement(data,
                                             cookie_labeler=request.cookies.get(LABELER_COOKIE))
        version = await asyncio.wrap_future(label_writer().submit(judgement))
        return JSONResponse({"labels_version": version}, status_code=201)

    def agreement(request: Request) -> Response:
        return strict_json(browse.agreement(store, set_name=request.query_params.get("set")))

    async def domain_error(request: Request, exc: TtspoError) -> Response:
        return error(_status(exc), str(exc))

    async def not_found(request: Request, exc: Exception) -> Response:
        return error(getattr(exc, "status_code", 404), getattr(exc, "detail", "not found"))

    static = files("ttspo.builder.review.serve").joinpath("static")
    routes = [
        Route("/", index), Route("/api/tables", tables), Route("/api/rows", rows),
        Route("/api/dynamics", dynamics), Route("/api/audio", audio_file),
        Route("/api/pair", pair), Route("/api/labels", label, methods=["POST"]),
        Route("/api/agreement", agreement),
        Mount("/static", app=StaticFiles(directory=str(static)), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        if writer:  # the labels queued before the server stopped are written
            writer[0].close()

    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={TtspoError: domain_error, 404: not_found,
                                        405: not_found})
    return Guard(app, token)


def strict_json(content: Any) -> Response:
    return Response(json.dumps(content, allow_nan=False, default=str),
                    media_type="application/json")


def _text(params, key: str) -> str:
    value = params.get(key)
    if not value:
        raise InputError(f"query parameter {key!r} is missing")
    return value


def _int(params, key: str, default: int | None) -> int | None:
    value = params.get(key)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(f"query parameter {key!r} must be an integer, not {value[:40]!r}") \
            from None
