"""
The dashboard over HTTP: its pages for GET, its actions for POST, and the
router that mounts it beside the stats and metrics at C{DashboardPattern}.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Sequence
from importlib import resources
from typing import Any
from urllib.parse import quote, unquote, urlencode

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.template import Flattenable, flattenString

from goophry_tx import operations
from goophry_tx.dashboard import views
from goophry_tx.dashboard.auth import COOKIE, SESSION_LIFETIME, Guard
from goophry_tx.dashboard.history import read_history
from goophry_tx.keys import Keys
from goophry_tx.redis import RedisLink, is_transient
from goophry_tx.web import clean_path, pattern_matches

#: Seconds before a wrong token is answered: guessing it is slow.
WRONG_TOKEN_DELAY = 1.0

#: Sent with every answer: no script but ours, no framing, no sniffing, no referrer.
SECURITY_HEADERS = {
    b"content-security-policy": (
        b"default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    b"x-frame-options": b"DENY",
}

_ASSETS = {
    "dashboard.css": b"text/css; charset=utf-8",
    "dashboard.js": b"text/javascript; charset=utf-8",
}

#: What a type's page can do, by the last part of the URL it posts to.
ACTIONS = ("retry", "delete", "retry-all", "purge-all", "pause", "resume")


def _asset(name: str) -> bytes:
    return resources.files("goophry_tx.dashboard").joinpath(f"static/{name}").read_bytes()


class _Refused(Exception):
    """A request the dashboard will not serve: its status and why."""

    def __init__(self, status: int, title: str, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.title = title
        self.text = text


class DashboardResource(Resource):
    """
    Every page and action of the dashboard mounted at C{pattern}; reads
    and writes only through L{goophry_tx.operations}.

    @param link: the daemon's control link to Redis.
    @param types: the configured task types, in the config's order.
    @param clock: for sessions and the delay before a wrong token's answer.
    @param token: C{DashboardToken}; None makes the dashboard read-only.
    """

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        link: RedisLink,
        keys: Keys,
        types: Sequence[str],
        clock: IReactorTime,
        pattern: str,
        token: str | None = None,
    ) -> None:
        super().__init__()
        self._link = link
        self._keys = keys
        self._types = list(types)
        self._clock = clock
        self._pattern = pattern
        self.guard = Guard(clock, token)
        self._assets = {name: (_asset(name), kind) for name, kind in _ASSETS.items()}

    # Routing

    def _route(self, request: Request) -> list[str]:
        """The parts of the path below the pattern, each unquoted."""
        raw = (request.path or b"/").decode("ascii", "replace")
        base = quote(self._pattern)
        rest = raw[len(base) :] if raw.startswith(base) else unquote(raw)[len(self._pattern) :]
        return [unquote(part) for part in rest.split("/")]

    def _type(self, name: str) -> str:
        if name not in self._types:
            raise _Refused(404, "Not found", "No such task type in this daemon's configuration.")
        return name

    def render_GET(self, request: Request) -> bytes | int:  # noqa: N802 (Twisted's name)
        self._secure(request)
        route = self._route(request)
        if route[0] == "static" and len(route) == 2 and route[1] in self._assets:
            body, kind = self._assets[route[1]]
            request.setHeader(b"content-type", kind)
            request.setHeader(b"cache-control", b"max-age=300")
            return body
        if route == ["login"] and not self.guard.read_only:
            return self._page(request, self._login, wrong=False)
        if route == [""]:
            return self._page(request, self._overview)
        if route == ["instances"]:
            return self._page(request, self._instances)
        if len(route) == 2 and route[0] == "type":
            return self._page(request, self._type_page, route[1])
        if self._is_write(route):
            request.setHeader(b"allow", b"POST")
            return self._refusal(request, _Refused(405, "Not allowed", "Changes are POSTed."))
        return self._refusal(request, _Refused(404, "Not found", "No such page."))

    def render_POST(self, request: Request) -> bytes | int:  # noqa: N802 (Twisted's name)
        self._secure(request)
        route = self._route(request)
        if route == ["login"] and not self.guard.read_only:
            return self._respond(request, self._log_in(request))
        if route == ["logout"]:
            return self._respond(request, self._log_out(request))
        if self._is_write(route):
            return self._respond(request, self._write(request, route[1], route[2]))
        return self._refusal(request, _Refused(404, "Not found", "No such action."))

    @staticmethod
    def _is_write(route: list[str]) -> bool:
        return len(route) == 3 and route[0] == "type" and route[2] in ACTIONS

    # Answering

    @staticmethod
    def _secure(request: Request) -> None:
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        request.setHeader(b"cache-control", b"no-store")

    def _context(self, request: Request, message: str | None = None) -> views.Context:
        return views.Context(
            base=self._pattern,
            prefix=self._keys.prefix,
            access=self.guard.access(request),
            read_only=self.guard.read_only,
            message=message,
        )

    def _page(
        self,
        request: Request,
        build: Callable[..., Coroutine[Any, Any, views.Page]],
        *args: Any,
        **kwargs: Any,
    ) -> int:
        return self._respond(request, build(request, *args, **kwargs))

    def _respond(self, request: Request, work: Coroutine[Any, Any, Flattenable | None]) -> int:
        """Run C{work}; write the page it makes (or the refusal it raises) when it is done."""
        gone: list[bool] = []
        # The browser went away (a refresh overtaken by a click): nothing is
        # wrong, there is only no one left to answer.
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        async def answer() -> bytes:
            result: Flattenable | None
            try:
                result = await work
            except _Refused as refused:
                request.setResponseCode(refused.status)
                result = self._problem(request, refused)
            if result is None:
                return b""
            return b"<!DOCTYPE html>\n" + await flattenString(request, result)

        def write(body: bytes) -> None:
            if gone:
                return
            if body:
                request.setHeader(b"content-type", b"text/html; charset=utf-8")
            request.write(body)
            request.finish()

        def failed(failure: Failure) -> None:
            if is_transient(failure):
                # Redis is away; the daemon's own log already says so.
                self.log.warn(
                    "dashboard: {path}: Redis did not answer: {error}",
                    path=request.path,
                    error=failure.getErrorMessage(),
                )
            else:
                self.log.failure(
                    "dashboard: {method} {path} failed",
                    failure,
                    method=request.method,
                    path=request.path,
                )
            if gone:
                return
            request.setResponseCode(503)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            request.write(b"Redis did not answer; try again in a moment.\n")
            request.finish()

        Deferred.fromCoroutine(answer()).addCallbacks(write, failed)
        return NOT_DONE_YET

    def _problem(self, request: Request, refused: _Refused) -> views.Page:
        return views.Page(
            self._context(request),
            refused.title,
            "",
            views.problem_page(refused.title, refused.text),
            refresh=False,
        )

    def _refusal(self, request: Request, refused: _Refused) -> int:
        async def refuse() -> None:
            raise refused

        return self._respond(request, refuse())

    @staticmethod
    def _arg(request: Request, name: str) -> str | None:
        values = (request.args or {}).get(name.encode("ascii"))
        return values[0].decode("utf-8", "replace") if values else None

    # Pages

    async def _overview(self, request: Request) -> views.Page:
        now = self._clock.seconds()
        figures = await operations.stats(self._link, self._keys, self._types)
        inflight = await operations.inflight(self._link, self._keys)
        history = await read_history(self._link, self._keys, now)
        running: dict[str, int] = {}
        for entry in inflight:
            if entry.alive:
                running[entry.type] = running.get(entry.type, 0) + 1
        content = views.overview(self._context(request), figures, running, history, now)
        return views.Page(self._context(request), "Overview", "overview", content)

    async def _type_page(self, request: Request, name: str) -> views.Page:
        task_type = self._type(name)
        try:
            page = max(1, int(self._arg(request, "page") or "1"))
        except ValueError:
            page = 1
        size = views.PAGE_SIZE
        head = await operations.queue_head(self._link, self._keys, task_type, size)
        running = await operations.inflight(self._link, self._keys, task_type)
        failed = await operations.failed_list(
            self._link, self._keys, task_type, (page - 1) * size, size
        )
        figures = await operations.stats(self._link, self._keys, [task_type])
        context = self._context(request, self._done_message(request))
        content = views.type_page(
            context, task_type, figures.types[task_type].paused, head, running, failed, page
        )
        return views.Page(context, task_type, "type", content)

    async def _instances(self, request: Request) -> views.Page:
        found = await operations.instances(self._link, self._keys)
        context = self._context(request)
        return views.Page(context, "Instances", "instances", views.instances_page(context, found))

    async def _login(self, request: Request, wrong: bool) -> views.Page:
        context = self._context(request)
        return views.Page(
            context, "Log in", "login", views.login_page(context, wrong), refresh=False
        )

    # Logging in and out

    async def _slowly(self) -> None:
        await deferLater(self._clock, WRONG_TOKEN_DELAY, lambda: None)

    async def _log_in(self, request: Request) -> views.Page | None:
        if not self.guard.token_matches(self._arg(request, "token") or ""):
            await self._slowly()
            request.setResponseCode(403)
            return await self._login(request, wrong=True)
        sid = self.guard.open_session()
        request.addCookie(
            COOKIE,
            sid,
            path=self._pattern,
            max_age=str(int(SESSION_LIFETIME)),
            httpOnly=True,
            secure=request.isSecure() or None,
            sameSite="strict",
        )
        self._redirect(request, self._pattern)
        return None

    async def _log_out(self, request: Request) -> None:
        access = self.guard.access(request)
        if access.session is None or not self.guard.csrf_matches(
            access, self._arg(request, "csrf")
        ):
            raise _Refused(403, "Refused", "Not logged in, or the form's CSRF token is missing.")
        self.guard.close_session(access.session)
        request.addCookie(
            COOKIE,
            "",
            path=self._pattern,
            max_age="0",
            httpOnly=True,
            secure=request.isSecure() or None,
            sameSite="strict",
        )
        self._redirect(request, self._pattern)

    @staticmethod
    def _redirect(request: Request, location: str) -> None:
        request.setResponseCode(303)
        request.setHeader(b"location", location.encode("utf-8"))

    # Changes

    async def _authorize(self, request: Request) -> bool:
        """
        Whether this POST may change things; True when it came with a
        bearer token (a script), False when from a logged-in browser.
        """
        if self.guard.read_only:
            raise _Refused(403, "Read-only", "This dashboard is read-only (no DashboardToken).")
        bearer = self.guard.bearer(request)
        if bearer is not None:
            if not self.guard.token_matches(bearer):
                await self._slowly()
                request.setHeader(b"www-authenticate", b'Bearer realm="goophry"')
                raise _Refused(401, "Refused", "Wrong token.")
            return True
        access = self.guard.access(request)
        if not access.can_write:
            raise _Refused(403, "Refused", "Log in to change anything.")
        if not self.guard.csrf_matches(access, self._arg(request, "csrf")):
            raise _Refused(403, "Refused", "The form's CSRF token is missing or wrong.")
        return False

    async def _write(self, request: Request, name: str, action: str) -> Flattenable | None:
        by_script = await self._authorize(request)
        task_type = self._type(name)
        result: operations.Moved | operations.PauseChange
        link, keys = self._link, self._keys
        if action in ("retry", "delete"):
            try:
                refs = [
                    operations.EntryRef(
                        int(self._arg(request, "index") or ""), self._arg(request, "id")
                    )
                ]
            except ValueError:
                raise _Refused(400, "Bad request", "No entry index given.") from None
            run = operations.failed_retry if action == "retry" else operations.failed_purge
            result = await run(link, keys, task_type, refs)
        elif action == "retry-all":
            result = await operations.failed_retry(link, keys, task_type, None)
        elif action == "purge-all":
            if self._arg(request, "confirm") != "yes":
                raise _Refused(400, "Bad request", "Purging all needs the box ticked.")
            result = await operations.failed_purge(link, keys, task_type, None)
        else:
            change = operations.pause if action == "pause" else operations.resume
            result = await change(link, keys, task_type)
        self.log.info(
            "dashboard: {action} {type}: {result}",
            action=action,
            type=task_type,
            result=result.as_json(),
        )
        if by_script:
            request.setHeader(b"content-type", b"application/json")
            request.write(json.dumps(result.as_json()).encode("utf-8"))
            return None
        query = {"did": action}
        if isinstance(result, operations.Moved):
            query.update(done=str(len(result.done)), skipped=str(len(result.skipped)))
        self._redirect(
            request, f"{self._pattern}type/{quote(task_type, safe='')}?" + urlencode(query)
        )
        return None

    def _done_message(self, request: Request) -> str | None:
        """The line shown after an action: built from numbers only, never from the URL's text."""
        did = self._arg(request, "did")
        messages = {
            "retry": "Retried {done}",
            "delete": "Deleted {done}",
            "retry-all": "Retried {done}",
            "purge-all": "Purged {done}",
            "pause": "Paused",
            "resume": "Resumed",
        }
        if did not in messages:
            return None
        try:
            done, skipped = (int(self._arg(request, k) or "0") for k in ("done", "skipped"))
        except ValueError:
            return None
        text = messages[did].format(done=done)
        return text + (f"; {skipped} left as they changed or cannot run" if skipped else "") + "."


class StatsRouter(Resource):
    """
    Sends what is at or below C{DashboardPattern} to the dashboard and the
    rest to the stats resource, as Go's mux would: the longest matching
    pattern wins, C{others} being the patterns the stats resource serves.
    """

    isLeaf = True

    def __init__(
        self, stats: Resource, others: Sequence[str], dashboard: Resource, pattern: str
    ) -> None:
        super().__init__()
        self._stats = stats
        self._others = list(others)
        self._dashboard = dashboard
        self._pattern = pattern

    def render(self, request: Request) -> bytes | int:
        path = unquote((request.path or b"/").decode("utf-8", "replace"))
        if clean_path(path) != path:
            # The stats resource redirects to the clean path, as it did before.
            return self._stats.render(request)  # type: ignore[no-any-return]
        longest = max((p for p in self._others if pattern_matches(p, path)), key=len, default="")
        if pattern_matches(self._pattern, path) and len(self._pattern) > len(longest):
            return self._dashboard.render(request)  # type: ignore[no-any-return]
        if path == self._pattern[:-1] and path not in self._others:
            # As Go's mux does for a subtree pattern asked without its slash.
            request.setResponseCode(301)
            request.setHeader(b"location", quote(self._pattern).encode("ascii"))
            return b""
        return self._stats.render(request)  # type: ignore[no-any-return]
