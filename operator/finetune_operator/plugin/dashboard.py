"""`kubectl finetune dashboard`: one static page and a read-only proxy on loopback, like `kubectl proxy`.

The page lists and watches FineTuneJobs, EvalRuns and Models through `/api/<plural>`; the server
forwards exactly those GETs (list and watch, in the chosen namespace) with the user's kubeconfig, so
what RBAC lets the user read is what the page shows, and a refusal is passed on as the apiserver
worded it. On the way through, each object gains a `dashboard` field computed by views (a job's
steps, an evaluation's thresholds), so the page only draws and the logic stays tested in Python.
Requests whose Host is not the loopback address are refused (a DNS-rebinding page cannot reach it),
and nothing but GET is served.
"""

from __future__ import annotations

import json
import threading
import time
import webbrowser
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, TextIO
from urllib.parse import parse_qs, urlencode, urlsplit

from ..api import EVALRUN, FINETUNEJOB, MODEL, Kind
from . import views
from .access import Cluster, Refused

DASHBOARD_KINDS: dict[str, Kind] = {k.plural: k for k in (FINETUNEJOB, EVALRUN, MODEL)}
FORWARDED = ("watch", "resourceVersion", "allowWatchBookmarks", "timeoutSeconds")
"""The only query parameters passed on: list and watch, nothing that selects another object."""
WATCH_SECONDS = 240
CSP = "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
"""The page may load nothing from anywhere else: its style and script are inline, its data same-origin."""


def annotate(kind: Kind, body: Mapping[str, Any], models: list[dict[str, Any]]) -> dict[str, Any]:
    """The object as the page draws it: its own fields plus what views derive from them."""
    extra: dict[str, Any] = {}
    if kind is FINETUNEJOB:
        extra["steps"] = [s.to_json() for s in views.steps(body, models)]
    elif kind is EVALRUN:
        extra["thresholds"] = views.thresholds(body)
    return {**body, "dashboard": extra}


class Models:
    """The Models the user may read, re-listed at most every few seconds: what a job's registered step needs."""

    def __init__(self, cluster: Cluster, ttl: float = 3.0) -> None:
        self.cluster, self.ttl = cluster, ttl
        self._lock = threading.Lock()
        self._at = -ttl
        self._items: list[dict[str, Any]] = []

    def get(self) -> list[dict[str, Any]]:
        with self._lock:
            if time.monotonic() - self._at >= self.ttl:
                try:
                    self._items = self.cluster.items(MODEL)
                except Refused:
                    self._items = []
                self._at = time.monotonic()
            return self._items


def allowed_host(host: str | None, port: int) -> bool:
    return host in {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}


def forwarded_query(query: str) -> dict[str, str]:
    given = parse_qs(query)
    return {k: given[k][0] for k in FORWARDED if k in given}


class Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    protocol_version = "HTTP/1.0"  # a watch ends by closing the connection; no chunking to manage

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a watch per kind would fill the terminal."""

    def do_GET(self) -> None:
        if not allowed_host(self.headers.get("Host"), self.server.server_port):
            self._send(HTTPStatus.FORBIDDEN, b"only http://127.0.0.1 may use this dashboard\n", "text/plain")
            return
        url = urlsplit(self.path)
        if url.path in {"/", "/index.html"}:
            page = resources.files(__package__).joinpath("static/dashboard.html").read_bytes()
            self._send(HTTPStatus.OK, page, "text/html; charset=utf-8")
        elif url.path == "/api/config":
            cluster = self.server.cluster
            where = {"namespace": None if cluster.all_namespaces else cluster.namespace}
            self._json(HTTPStatus.OK, {**where, "kinds": list(DASHBOARD_KINDS)})
        elif url.path.startswith("/api/") and url.path[5:] in DASHBOARD_KINDS:
            self._proxy(DASHBOARD_KINDS[url.path[5:]], forwarded_query(url.query))
        else:
            self._json(HTTPStatus.NOT_FOUND, {"message": f"{url.path} is not served here"})

    def _proxy(self, kind: Kind, query: dict[str, str]) -> None:
        cluster = self.server.cluster
        namespace = None if cluster.all_namespaces else cluster.namespace
        path = cluster.collection(kind, namespace)
        watching = query.get("watch") in {"1", "true"}
        if watching:
            query.setdefault("timeoutSeconds", str(WATCH_SECONDS))
        try:
            if not watching:
                listed = cluster.request("GET", f"{path}?{urlencode(query)}" if query else path)
                models = self.server.models.get()
                listed["items"] = [annotate(kind, i, models) for i in listed.get("items") or []]
                self._json(HTTPStatus.OK, listed)
                return
            response = cluster.request("GET", f"{path}?{urlencode(query)}", stream=True)
        except Refused as error:
            self._json(
                HTTPStatus(error.status) if error.status in HTTPStatus._value2member_map_ else 502,
                {"message": str(error)},
            )
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        try:
            pending = b""
            for chunk in response.stream(4096, decode_content=True):
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    self._event(kind, line)
                self.wfile.flush()
        except OSError:
            pass  # the page went away
        finally:
            response.release_conn()

    def _event(self, kind: Kind, line: bytes) -> None:
        if not line.strip():
            return
        event = json.loads(line)
        if event.get("type") in {"ADDED", "MODIFIED", "DELETED"}:
            event["object"] = annotate(kind, event["object"], self.server.models.get())
        self.wfile.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")

    def _json(self, status: HTTPStatus | int, body: Any) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: HTTPStatus | int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header(
            "Content-Security-Policy", "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
        )
        self.end_headers()
        self.wfile.write(body)


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, cluster: Cluster, port: int) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.cluster = cluster
        self.models = Models(cluster)


def serve(cluster: Cluster, port: int, *, open_browser: bool, out: TextIO) -> int:
    try:
        server = DashboardServer(cluster, port)
    except OSError as error:
        raise Refused(f"error: cannot listen on 127.0.0.1:{port}: {error.strerror} (try --port 0)") from error
    url = f"http://127.0.0.1:{server.server_port}/"
    where = "all namespaces" if cluster.all_namespaces else f"namespace {cluster.namespace}"
    print(f"Dashboard for {where} at {url} (Ctrl-C to stop)", file=out, flush=True)
    if open_browser:
        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
