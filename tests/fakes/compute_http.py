"""The fake Compute API's HTTP side: routes, list filters, paging and the API's error bodies.

It holds no state; every route calls a method of the FakeCompute it serves.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from tests.fakes.compute import FakeCompute

# The real API's page size when maxResults is not given.
DEFAULT_PAGE = 500
_REASONS = {400: "invalid", 403: "forbidden", 404: "notFound", 409: "alreadyExists",
            503: "backendError"}


class ApiError(Exception):
    """An HTTP error as the API sends it: status, message and the reason word."""

    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason or _REASONS.get(status, "error")

    def body(self) -> dict[str, Any]:
        error = {"message": str(self), "domain": "global", "reason": self.reason}
        return {"error": {"code": self.status, "message": str(self), "errors": [error]}}


class Request:
    """One call: its path fields, query and JSON body."""

    def __init__(self, fields: dict[str, str], query: dict[str, str], body: Any) -> None:
        self.fields = fields
        self.query = query
        self.body = body


_P = "/compute/v1/projects/(?P<project>[^/]+)"
# (HTTP method, path, the FakeCompute method, the call's name as the fake counts it)
ROUTES: list[tuple[str, re.Pattern[str], str, str]] = [
    (m, re.compile(_P + p + "$"), handler, name) for m, p, handler, name in [
        ("GET", "/zones", "list_zones", "zones.list"),
        ("GET", "/zones/(?P<zone>[^/]+)", "get_zone", "zones.get"),
        ("GET", "/zones/(?P<zone>[^/]+)/machineTypes", "list_machine_types", "machineTypes.list"),
        ("GET", "/zones/(?P<zone>[^/]+)/machineTypes/(?P<name>[^/]+)", "get_machine_type",
         "machineTypes.get"),
        ("GET", "/aggregated/machineTypes", "aggregated_machine_types",
         "machineTypes.aggregatedList"),
        ("POST", "/zones/(?P<zone>[^/]+)/instances", "insert", "instances.insert"),
        ("POST", "/zones/(?P<zone>[^/]+)/instances/bulkInsert", "bulk_insert",
         "instances.bulkInsert"),
        ("GET", "/zones/(?P<zone>[^/]+)/instances", "list_instances", "instances.list"),
        ("GET", "/zones/(?P<zone>[^/]+)/instances/(?P<name>[^/]+)", "get_instance",
         "instances.get"),
        ("DELETE", "/zones/(?P<zone>[^/]+)/instances/(?P<name>[^/]+)", "delete",
         "instances.delete"),
        ("GET", "/aggregated/instances", "aggregated_instances", "instances.aggregatedList"),
        ("GET", "/zones/(?P<zone>[^/]+)/operations/(?P<name>[^/]+)", "get_operation",
         "zoneOperations.get"),
        ("POST", "/zones/(?P<zone>[^/]+)/operations/(?P<name>[^/]+)/wait", "wait_operation",
         "zoneOperations.wait"),
    ]
]


def serve(fake: FakeCompute) -> ThreadingHTTPServer:
    """A server on a free loopback port whose handler calls `fake`; not yet serving."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            status, body = dispatch(fake, self.command, url.path, url.query, raw)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json; charset=UTF-8")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _handle

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    return server


def dispatch(fake: FakeCompute, method: str, path: str, query_string: str,
             raw: bytes) -> tuple[int, Any]:
    """(status, JSON body) for one HTTP call."""
    query = {k: v[-1] for k, v in parse_qs(query_string, keep_blank_values=True).items()}
    for route_method, pattern, handler, name in ROUTES:
        match = pattern.match(path)
        if route_method != method or not match:
            continue
        fake.count(name)
        try:
            body = json.loads(raw) if raw else None
            method_of: Callable[[Request], tuple[int, Any]] = getattr(fake, handler)
            return method_of(Request(match.groupdict(), query, body))
        except ApiError as e:
            return e.status, e.body()
        except json.JSONDecodeError as e:
            return 400, ApiError(400, f"Invalid JSON payload received. {e}").body()
    fake.count(f"unknown {method} {path}")
    return 404, ApiError(404, f"The requested URL {path} was not found on this server.").body()


_TERM = re.compile(r"""^\s*([\w.-]+)\s*(=|!=|\beq\b|\bne\b)\s*("[^"]*"|'[^']*'|\S+)\s*$""")


def parse_filter(text: str) -> list[tuple[str, str, str]]:
    """(field path, operator, value) terms, all of which must hold.

    Takes what the provider sends: `labels.burla-cluster = "NAME"`, terms in parentheses
    joined by AND or by juxtaposition, `=`/`!=` for equality and `eq`/`ne` for a regular
    expression. Anything else is refused the way the API refuses a bad filter.
    """
    if not text.strip():
        return []
    if re.search(r"\bOR\b", text):
        raise ApiError(400, f"Invalid value for field 'filter': '{text}'. OR is not supported "
                            "by this fake.")
    parts = re.findall(r"\(([^()]*)\)", text) if "(" in text else re.split(r"\bAND\b", text)
    leftover = re.sub(r"\([^()]*\)|\bAND\b|\s", "", text) if "(" in text else ""
    terms = []
    for part in parts:
        for piece in re.split(r"\bAND\b", part):
            match = _TERM.match(piece)
            if not match or leftover:
                raise ApiError(400, f"Invalid value for field 'filter': '{text}'. Invalid list "
                                    "filter expression.")
            field, op, value = match.groups()
            terms.append((field, op, value.strip("\"'")))
    return terms


def matches(resource: dict[str, Any], terms: list[tuple[str, str, str]]) -> bool:
    for field, op, value in terms:
        found: Any = resource
        for key in field.split("."):
            found = found.get(key) if isinstance(found, dict) else None
        text = str(found).lower() if isinstance(found, bool) else str(found)
        if op == "=" and (found is None or text != value):
            return False
        if op == "!=" and found is not None and text == value:
            return False
        if op == "eq" and (found is None or not re.fullmatch(value, text)):
            return False
        if op == "ne" and found is not None and re.fullmatch(value, text):
            return False
    return True


def page(items: list[Any], query: dict[str, str]) -> tuple[list[Any], str | None]:
    """One page of `items` and the token of the next, as maxResults and pageToken ask."""
    size = int(query.get("maxResults") or DEFAULT_PAGE)
    start = int(query.get("pageToken") or 0)
    end = start + size
    return items[start:end], (str(end) if end < len(items) else None)


def list_body(kind: str, items: list[Any], token: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": kind, "id": kind}
    if items:
        body["items"] = items
    if token:
        body["nextPageToken"] = token
    return body


def aggregated_body(kind: str, key: str, zones: list[str], found: list[tuple[str, Any]],
                query: dict[str, str]) -> dict[str, Any]:
    """An aggregated list page: every zone's scope, empty ones with the API's warning."""
    items, token = page(found, query)
    scopes: dict[str, Any] = {}
    for zone in zones:
        mine = [item for z, item in items if z == zone]
        scopes[f"zones/{zone}"] = {key: mine} if mine else {"warning": {
            "code": "NO_RESULTS_ON_PAGE",
            "message": f"There are no results for scope 'zones/{zone}' on this page.",
            "data": [{"key": "scope", "value": f"zones/{zone}"}]}}
    body: dict[str, Any] = {"kind": kind, "id": kind, "items": scopes}
    if token:
        body["nextPageToken"] = token
    return body
