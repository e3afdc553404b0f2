"""The worker's metrics port: Prometheus text format, only for `Bearer <OPERATOR_TOKEN>`.

prometheus_client's own start_http_server() has no authentication, and the port is bound to
every interface in compose and Kubernetes. This serves the same WSGI app behind a constant-time
token check (the worker does not import the API layer, so the check is repeated here). An empty
token closes the port to every request, as it closes the API's operator routes.
"""

import secrets
import threading
from collections.abc import Iterable
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from prometheus_client import CollectorRegistry


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """One thread per scrape, so a slow client does not hold up the next one."""

    daemon_threads = True


class _SilentHandler(WSGIRequestHandler):
    """No access log on stderr (the worker's logs are JSON)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def require_bearer(app: "WSGIApplication", token: str) -> "WSGIApplication":
    """`app`, answering 401 unless the request carries `Authorization: Bearer <token>`."""
    expected = f"Bearer {token}".encode()

    def guarded(environ: "WSGIEnvironment", start_response: "StartResponse") -> Iterable[bytes]:
        given = environ.get("HTTP_AUTHORIZATION", "").encode()
        if token and secrets.compare_digest(given, expected):
            return app(environ, start_response)
        start_response(
            "401 Unauthorized",
            [("Content-Type", "text/plain; charset=utf-8"), ("WWW-Authenticate", "Bearer")],
        )
        return [b"Missing or wrong operator token\n"]

    return guarded


def start_metrics_server(
    registry: "CollectorRegistry", *, host: str, port: int, token: str
) -> WSGIServer:
    """Serve `registry` on `host:port` from a daemon thread; raises OSError if the port is taken."""
    from prometheus_client import make_wsgi_app

    server = make_server(
        host,
        port,
        require_bearer(make_wsgi_app(registry), token),
        server_class=_ThreadingWSGIServer,
        handler_class=_SilentHandler,
    )
    threading.Thread(target=server.serve_forever, name="metrics-server", daemon=True).start()
    return server
