"""
Usage statistics, as JSON (the original's fields and more) and as
Prometheus metrics, served by twisted.web.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Mapping
from urllib.parse import quote, unquote

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import Request

from goophry_tx import __version__
from goophry_tx.outcomes import TypeCounters


class Stats:
    """The counters of every configured task type, as the outcome recorder keeps them."""

    def __init__(self, clock: IReactorTime, types: Mapping[str, TypeCounters]) -> None:
        self._clock = clock
        self.started_at = clock.seconds()
        self.types = types
        #: Tells whether Redis is reachable; set by the service.
        self.redis_connected: Callable[[], bool] = lambda: False

    def runtime(self) -> int:
        return int(self._clock.seconds() - self.started_at)

    def as_json(self) -> dict[str, object]:
        """The original's fields (Runtime, TaskCount, Version), then ours."""

        def each(field: str) -> dict[str, object]:
            return {t: getattr(c, field) for t, c in self.types.items()}

        return {
            "Runtime": self.runtime(),
            "TaskCount": each("started"),
            "Version": __version__,
            "Running": each("running"),
            "Succeeded": each("succeeded"),
            "Failed": each("failed"),
            "Invalid": each("invalid"),
            "Requeued": each("requeued"),
            "RedisConnected": self.redis_connected(),
        }

    def as_prometheus(self) -> str:
        """The text exposition format, version 0.0.4."""
        lines: list[str] = []

        def metric(name: str, kind: str, text: str, field: str | None, value: float = 0) -> None:
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")
            if field is None:
                lines.append(f"{name} {value}")
                return
            for task_type, counters in self.types.items():
                label = task_type.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
                lines.append(f'{name}{{type="{label}"}} {getattr(counters, field)}')

        metric("goophry_tasks_started_total", "counter", "Tasks started.", "started")
        metric("goophry_tasks_succeeded_total", "counter", "Tasks that succeeded.", "succeeded")
        metric("goophry_tasks_failed_total", "counter", "Tasks that failed.", "failed")
        metric("goophry_entries_invalid_total", "counter", "Invalid entries stored.", "invalid")
        metric(
            "goophry_entries_requeued_total", "counter", "Entries put back at shutdown.", "requeued"
        )
        metric("goophry_tasks_running", "gauge", "Tasks running now.", "running")
        metric(
            "goophry_task_duration_seconds_total", "counter", "Time spent running tasks.", "seconds"
        )
        metric(
            "goophry_redis_connected",
            "gauge",
            "1 when Redis is reachable.",
            None,
            1 if self.redis_connected() else 0,
        )
        metric("goophry_uptime_seconds", "gauge", "Seconds since start.", None, self.runtime())
        return "\n".join(lines) + "\n"


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

    def render_GET(self, request: Request) -> bytes:
        path = unquote((request.path or b"/").decode("utf-8", "replace"))
        cleaned = clean_path(path)
        if cleaned != path:
            request.setResponseCode(301)
            request.setHeader(b"location", quote(cleaned).encode("ascii"))
            return b""
        if pattern_matches(self._metrics_pattern, path):
            request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
            return self._stats.as_prometheus().encode("utf-8")
        if pattern_matches(self._pattern, path):
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

    render_HEAD = render_GET
    # Go's handler answered whatever the method.
    render_POST = render_GET
