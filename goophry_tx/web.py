"""
The stats server's pages, served by twisted.web: the JSON stats at
StatsPattern and the Prometheus metrics at MetricsPattern, matched by the
rules of Go's ServeMux as the original's were (the dashboard follows them
too).
"""

from __future__ import annotations

import json
import posixpath
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

from twisted.web.resource import Resource
from twisted.web.server import Request

from goophry_tx.stats import Stats

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


def pattern_matches(pattern: str, path: str) -> bool:
    """Go's ServeMux rule: C{/x/} matches the subtree, C{/x} only itself."""
    if pattern.endswith("/"):
        return path.startswith(pattern)
    return path == pattern


def clean_path(path: str) -> str:
    """
    The path as Go's ServeMux cleans it before matching: C{.} and C{..}
    resolved, repeated slashes folded, a trailing slash kept.
    """
    if not path.startswith("/"):
        path = "/" + path
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    if path.endswith("/") and cleaned != "/":
        cleaned += "/"
    return cleaned


class StatsResource(Resource):
    """Serves the JSON stats at StatsPattern and the metrics at MetricsPattern."""

    isLeaf = True

    def __init__(self, stats: Stats, pattern: str, metrics_pattern: str) -> None:
        super().__init__()
        self._stats = stats
        self._pattern = pattern
        self._metrics_pattern = metrics_pattern
        #: Made at the first scrape (L{goophry_tx.metrics} is imported then).
        self._registry: CollectorRegistry | None = None

    def render_GET(self, request: Request) -> bytes:
        path = unquote((request.path or b"/").decode("utf-8", "replace"))
        cleaned = clean_path(path)
        if cleaned != path:
            request.setResponseCode(301)
            request.setHeader(b"location", quote(cleaned).encode("ascii"))
            return b""
        if pattern_matches(self._metrics_pattern, path):
            return self._metrics(request)
        if pattern_matches(self._pattern, path):
            # Its Scheduled counts are the queue figures: as for a scrape.
            self._stats.refresh_queues()
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(self._stats.as_json()).encode("utf-8")
        if self._pattern.endswith("/") and path == self._pattern[:-1]:
            # As Go's mux does for a subtree pattern asked without its slash.
            request.setResponseCode(301)
            request.setHeader(b"location", self._pattern.encode("utf-8"))
            return b""
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"404 page not found\n"

    def _metrics(self, request: Request) -> bytes:
        # Imported here: prometheus_client costs memory that a daemon nobody
        # scrapes need not carry.
        from goophry_tx.metrics import encode_metrics, metrics_registry

        if self._registry is None:
            self._registry = metrics_registry(self._stats)
        # Collecting is synchronous and cannot wait for Redis: the queue
        # figures served are the cached ones, and a read for the next scrape
        # starts here when they are old.
        self._stats.refresh_queues()
        accept = request.getHeader(b"accept") or b""
        body, content_type = encode_metrics(self._registry, accept.decode("latin-1"))
        request.setHeader(b"content-type", content_type.encode("ascii"))
        return body

    render_HEAD = render_GET
    # Go's handler answered whatever the method.
    render_POST = render_GET
