"""goophry_tx.dashboard: its pages, its guard and its router, in memory."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from http.cookies import SimpleCookie
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.web.template import flattenString

from goophry_tx.config import ConfigError, parse_config
from goophry_tx.dashboard.resource import (
    SECURITY_HEADERS,
    WRONG_TOKEN_DELAY,
    DashboardResource,
    StatsRouter,
)
from goophry_tx.dashboard.views import visible
from goophry_tx.keys import Keys
from goophry_tx.outcomes import type_counters
from goophry_tx.redis import ConnectionError
from goophry_tx.stats import Stats
from goophry_tx.web import StatsResource
from tests.unit.fakes import assert_no_result, success_result_of

KEYS = Keys("q")
TOKEN = "correct horse battery staple"
BASE = "http://dash.test/ui/"
HOSTILE = [
    "<script>document.title='owned'</script>",
    '"><img src=x onerror=alert(1)>',
    "javascript:alert(2)",
    "right\u202eleft\u0007bell",
]


class MemoryLink:
    """
    Answers the read commands the dashboard sends from dicts, and records
    every change; enough Redis for its pages, no more.
    """

    def __init__(self) -> None:
        self.lists: dict[str, list[bytes]] = {}
        self.hashes: dict[str, dict[bytes, bytes]] = {}
        self.sets: dict[str, set[bytes]] = {}
        #: Sorted sets (the scheduled sets): member -> score.
        self.zsets: dict[str, dict[bytes, float]] = {}
        self.strings: set[str] = set()
        self.changes: list[tuple[Any, ...]] = []

    def execute(self, *command: Any) -> Deferred[Any]:
        return succeed(self._read(command))

    def _read(self, command: Sequence[Any]) -> Any:
        name, key, *args = command
        items = self.lists.get(key, [])
        if name == "LLEN":
            return len(items)
        if name == "LRANGE":
            start, stop = int(args[0]), int(args[1])
            return items[start : None if stop == -1 else stop + 1]
        if name == "HGETALL":
            return [x for kv in self.hashes.get(key, {}).items() for x in kv]
        if name == "HKEYS":
            return list(self.hashes.get(key, {}))
        if name == "EXISTS":
            return int(key in self.strings)
        if name == "SISMEMBER":
            member = args[0].encode() if isinstance(args[0], str) else args[0]
            return int(member in self.sets.get(key, set()))
        if name == "SMEMBERS":
            return list(self.sets.get(key, set()))
        if name == "ZCARD":
            return len(self.zsets.get(key, {}))
        raise AssertionError(f"unexpected command {command!r}")

    def transaction(self, commands: Sequence[Sequence[Any]]) -> Deferred[list[Any]]:
        if all(c[0] in ("LLEN", "ZCARD") for c in commands):
            # Reads in one MULTI/EXEC (the queue figures).
            return succeed([self._read(c) for c in commands])
        self.changes.extend(tuple(c) for c in commands)
        return succeed([1] * len(commands))


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1_800_000_000)
    return clock


@pytest.fixture
def link() -> MemoryLink:
    link = MemoryLink()
    link.lists["q:mail"] = [json.dumps({"Args": [HOSTILE[0]]}).encode()]
    link.lists["q:mail:failed"] = [
        json.dumps(
            {"Args": HOSTILE, "ErrorMessage": HOSTILE[1] + "\nsecond line", "FailedAt": 1.8e9}
        ).encode(),
        b"not json <b>bold</b>",
        json.dumps({"Args": None, "ErrorMessage": "invalid", "Payload": "raw <i>x</i>"}).encode(),
    ]
    link.lists["q:mail:inflight:host:1:ab"] = [b'{"Args":["running"]}']
    link.hashes["q:instances"] = {
        b"host:1:ab": json.dumps({"host": "host", "pid": 1, "types": ["mail"]}).encode()
    }
    link.strings.add("q:instance:host:1:ab")
    link.zsets["q:mail:scheduled"] = {b'{"Args":["later"],"GoophryId":"1"}': 1.9e9}
    return link


def client(link: MemoryLink, clock: Clock, token: str | None = TOKEN) -> StubTreq:
    resource = DashboardResource(
        link,  # type: ignore[arg-type]
        KEYS,
        ["mail", "report"],
        clock,
        "/ui/",
        token,
    )
    return StubTreq(resource)


def finished(d: Deferred[Any], http: StubTreq) -> Any:
    http.flush()
    return success_result_of(d)


def get(http: StubTreq, path: str, **kwargs: Any) -> tuple[Any, str]:
    response = finished(http.get(BASE + path, allow_redirects=False, **kwargs), http)
    return response, finished(response.text(), http)


def post(http: StubTreq, path: str, **kwargs: Any) -> Deferred[Any]:
    return http.post(BASE + path, allow_redirects=False, **kwargs)


def answered(http: StubTreq, d: Deferred[Any]) -> tuple[Any, str]:
    response = finished(d, http)
    return response, finished(response.text(), http)


def log_in(http: StubTreq, clock: Clock) -> tuple[dict[str, str], str]:
    """Log in; the session cookie, and the CSRF token of its forms."""
    response, _ = answered(http, post(http, "login", data={"token": TOKEN}))
    assert response.code == 303
    cookie = SimpleCookie(response.headers.getRawHeaders("set-cookie")[0])
    cookies = {name: morsel.value for name, morsel in cookie.items()}
    _, page = get(http, "type/mail", cookies=cookies)
    csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    return cookies, csrf


# Pages


def test_overview_shows_each_types_figures(link: MemoryLink, clock: Clock) -> None:
    response, page = get(client(link, clock), "")
    assert response.code == 200
    assert "text/html" in response.headers.getRawHeaders("content-type")[0]
    row = page.split('href="/ui/type/mail"', 1)[1].split("</tr>", 1)[0]
    numbers = [cell.split("<", 1)[0] for cell in row.split('class="num')[1:]]
    # Queued, running, in flight, failed, scheduled, succeeded and failed a minute.
    assert [n.split(">", 1)[1] for n in numbers] == ["1", "1", "1", "3", "1", "0", "0"]
    assert "1 instance alive" in page
    assert page.count("<svg") == 2


def test_every_answer_carries_the_security_headers(link: MemoryLink, clock: Clock) -> None:
    http = client(link, clock)
    for path in ["", "instances", "type/mail", "type/nope", "login", "static/dashboard.js"]:
        response, _ = get(http, path)
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.getRawHeaders(name) == [value], (path, name)
    assert "default-src 'self'" in SECURITY_HEADERS[b"content-security-policy"].decode()


def test_producer_data_is_shown_as_text(link: MemoryLink, clock: Clock) -> None:
    _, page = get(client(link, clock), "type/mail")
    assert "<script>document" not in page
    assert "<img src=x" not in page
    assert "<b>bold" not in page
    assert "&lt;script&gt;document.title" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "not json &lt;b&gt;bold&lt;/b&gt;" in page
    assert '<span class="ctl">\\u202e</span>' in page
    assert "\u202e" not in page
    assert 'href="javascript' not in page


def test_visible_marks_hidden_characters() -> None:
    html = success_result_of(flattenString(None, visible("a\u200bb\x1bc\U000e0041d\ne")))
    assert html == (
        b'a<span class="ctl">\\u200b</span>b<span class="ctl">\\u001b</span>c'
        b'<span class="ctl">\\U000e0041</span>d\ne'
    )


def test_a_type_page_shows_queue_running_and_failed(link: MemoryLink, clock: Clock) -> None:
    _, page = get(client(link, clock), "type/mail")
    assert "1 queued" in page and "1 in flight" in page and "3 failed" in page
    assert "host:1:ab" in page and "running" in page
    assert "2027-01-15 08:00:00 UTC" in page
    assert "unreadable entry (not JSON)" in page
    assert "payload </span>raw &lt;i&gt;x&lt;/i&gt;" in page


def test_failed_entries_are_paged(link: MemoryLink, clock: Clock) -> None:
    link.lists["q:mail:failed"] = [
        json.dumps({"Args": [f"n{i}"], "ErrorMessage": "x"}).encode() for i in range(120)
    ]
    http = client(link, clock)
    _, first = get(http, "type/mail")
    _, third = get(http, "type/mail?page=3")
    assert "n49" in first and "n50" not in first
    assert "n100" in third and "n119" in third and "n99" not in third
    assert "page 3 of 3" in third


def test_unknown_types_and_pages_are_not_found(link: MemoryLink, clock: Clock) -> None:
    http = client(link, clock)
    assert get(http, "type/nope")[0].code == 404
    assert get(http, "nothing/here")[0].code == 404


def test_the_instances_page(link: MemoryLink, clock: Clock) -> None:
    link.hashes["q:instances"][b"gone:2:cd"] = b'{"host":"gone","pid":2,"types":["mail"]}'
    _, page = get(client(link, clock), "instances")
    assert page.index("host:1:ab") < page.index("gone:2:cd"), "the live first"
    assert "badge ok" in page and "badge failed" in page


def test_assets_are_served_by_the_dashboard(link: MemoryLink, clock: Clock) -> None:
    http = client(link, clock)
    response, script = get(http, "static/dashboard.js")
    assert response.headers.getRawHeaders("content-type") == ["text/javascript; charset=utf-8"]
    assert "visibilitychange" in script
    response, css = get(http, "static/dashboard.css")
    assert response.headers.getRawHeaders("content-type") == ["text/css; charset=utf-8"]
    _, page = get(http, "")
    assert "<script>" not in page.replace("&lt;script&gt;", ""), "no inline script"
    assert 'src="/ui/static/dashboard.js"' in page


# Who may write


def test_read_only_without_a_token(link: MemoryLink, clock: Clock) -> None:
    http = client(link, clock, token=None)
    _, page = get(http, "type/mail")
    assert "Read-only" in page and "<form" not in page
    assert get(http, "login")[0].code == 404
    response, _ = answered(http, post(http, "type/mail/pause"))
    assert response.code == 403
    response, _ = answered(
        http, post(http, "type/mail/pause", headers={"Authorization": f"Bearer {TOKEN}"})
    )
    assert response.code == 403
    assert link.changes == []


def test_no_write_by_get(link: MemoryLink, clock: Clock) -> None:
    response, _ = get(
        client(link, clock), "type/mail/pause", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert response.code == 405
    assert response.headers.getRawHeaders("allow") == ["POST"]
    assert link.changes == []


def test_a_write_without_login_is_refused(link: MemoryLink, clock: Clock) -> None:
    http = client(link, clock)
    _, page = get(http, "type/mail")
    assert "<form" not in page and "Log in</a> to retry" in page
    response, _ = answered(http, post(http, "type/mail/pause", data={"csrf": "guess"}))
    assert response.code == 403
    assert link.changes == []


@pytest.fixture
def logged() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def test_a_wrong_token_is_answered_late_and_never_logged(
    link: MemoryLink, clock: Clock, logged: list[LogEvent]
) -> None:
    http = client(link, clock)
    for path, kwargs in [
        ("login", {"data": {"token": "wrong-guess"}}),
        ("type/mail/pause", {"headers": {"Authorization": "Bearer wrong-guess"}}),
    ]:
        d = post(http, path, **kwargs)
        http.flush()
        assert_no_result(d)
        clock.advance(WRONG_TOKEN_DELAY)
        response = finished(d, http)
        assert response.code in (401, 403)
        assert not response.headers.getRawHeaders("set-cookie")
    assert link.changes == []
    text = " ".join(formatEvent(e) + repr(e) for e in logged)
    assert "wrong-guess" not in text and TOKEN not in text


def test_a_bearer_token_writes(link: MemoryLink, clock: Clock) -> None:
    http = client(link, clock)
    response, body = answered(
        http, post(http, "type/mail/pause", headers={"Authorization": f"Bearer {TOKEN}"})
    )
    assert response.code == 200
    assert json.loads(body) == {"type": "mail", "paused": True, "changed": True}
    assert link.changes[0] == ("SADD", "q:paused", "mail")


def test_logging_in_sets_a_strict_http_only_cookie(link: MemoryLink, clock: Clock) -> None:
    http = client(link, clock)
    response, _ = answered(http, post(http, "login", data={"token": TOKEN}))
    assert response.code == 303
    header = response.headers.getRawHeaders("set-cookie")[0]
    assert "HttpOnly" in header and "SameSite=strict" in header and "Path=/ui/" in header
    assert "Secure" not in header, "plain HTTP here; Secure under TLS"


def test_a_session_writes_only_with_its_csrf_token(link: MemoryLink, clock: Clock) -> None:
    http = client(link, clock)
    cookies, csrf = log_in(http, clock)
    response, _ = answered(http, post(http, "type/mail/pause", cookies=cookies))
    assert response.code == 403
    response, _ = answered(
        http, post(http, "type/mail/pause", cookies=cookies, data={"csrf": csrf + "x"})
    )
    assert response.code == 403
    assert link.changes == []
    response, _ = answered(
        http, post(http, "type/mail/pause", cookies=cookies, data={"csrf": csrf})
    )
    assert response.code == 303
    assert response.headers.getRawHeaders("location") == ["/ui/type/mail?did=pause"]
    assert link.changes[0] == ("SADD", "q:paused", "mail")


def test_another_sessions_csrf_token_is_refused(link: MemoryLink, clock: Clock) -> None:
    http = client(link, clock)
    cookies, _ = log_in(http, clock)
    _, other_csrf = log_in(http, clock)
    response, _ = answered(
        http, post(http, "type/mail/resume", cookies=cookies, data={"csrf": other_csrf})
    )
    assert response.code == 403
    assert link.changes == []


def test_every_form_carries_the_csrf_token(link: MemoryLink, clock: Clock) -> None:
    http = client(link, clock)
    cookies, csrf = log_in(http, clock)
    _, page = get(http, "type/mail", cookies=cookies)
    forms = page.split("<form")[1:]
    assert len(forms) >= 5  # log out, pause, retry all, purge all, retry, delete...
    assert all(f'name="csrf" value="{csrf}"' in f.split("</form>")[0] for f in forms)


def test_logging_out_ends_the_session(link: MemoryLink, clock: Clock) -> None:
    http = client(link, clock)
    cookies, csrf = log_in(http, clock)
    response, _ = answered(http, post(http, "logout", cookies=cookies, data={"csrf": csrf}))
    assert response.code == 303
    response, _ = answered(
        http, post(http, "type/mail/pause", cookies=cookies, data={"csrf": csrf})
    )
    assert response.code == 403


def test_purging_all_needs_the_box_ticked(link: MemoryLink, clock: Clock) -> None:
    http = client(link, clock)
    response, _ = answered(
        http, post(http, "type/mail/purge-all", headers={"Authorization": f"Bearer {TOKEN}"})
    )
    assert response.code == 400


# Mounting


def router(link: MemoryLink, clock: Clock, stats_pattern: str = "/") -> StubTreq:
    stats = StatsResource(Stats(clock, type_counters(["mail"])), stats_pattern, "/metrics")
    dashboard = DashboardResource(link, KEYS, ["mail"], clock, "/ui/")  # type: ignore[arg-type]
    return StubTreq(StatsRouter(stats, [stats_pattern, "/metrics"], dashboard, "/ui/"))


def routed(http: StubTreq, path: str) -> tuple[Any, str]:
    response = finished(http.get("http://dash.test" + path, allow_redirects=False), http)
    return response, finished(response.text(), http)


def test_the_dashboard_wins_below_its_pattern(link: MemoryLink, clock: Clock) -> None:
    http = router(link, clock)
    assert "Overview" in routed(http, "/ui/")[1]
    assert "<!DOCTYPE html>" in routed(http, "/ui/instances")[1]
    assert json.loads(routed(http, "/")[1])["TaskCount"] == {"mail": 0}
    assert json.loads(routed(http, "/uix")[1])["TaskCount"] == {"mail": 0}
    assert "goophry_tasks_started_total" in routed(http, "/metrics")[1]
    response, _ = routed(http, "/ui")
    assert (response.code, response.headers.getRawHeaders("location")) == (301, ["/ui/"])
    response, _ = routed(http, "/ui/../metrics")
    assert response.code == 301, "unclean paths are cleaned first, as before"


def test_stats_keep_their_404(link: MemoryLink, clock: Clock) -> None:
    response, _ = routed(router(link, clock, stats_pattern="/stats"), "/elsewhere")
    assert response.code == 404


def test_a_longer_stats_pattern_wins_below_the_dashboard(link: MemoryLink, clock: Clock) -> None:
    http = router(link, clock, stats_pattern="/ui/stats")
    assert json.loads(routed(http, "/ui/stats")[1])["TaskCount"] == {"mail": 0}
    assert "Overview" in routed(http, "/ui/")[1]


def test_an_exact_stats_pattern_keeps_its_path(link: MemoryLink, clock: Clock) -> None:
    http = router(link, clock, stats_pattern="/ui")
    response, body = routed(http, "/ui")
    assert response.code == 200 and json.loads(body)["TaskCount"] == {"mail": 0}


# Configuration


def config(**settings: Any) -> Any:
    data = {"RedisQueueKey": "q", "Tasks": [{"Type": "t", "Script": "/bin/true"}], **settings}
    return parse_config("test.json", data, "/")


def test_the_dashboard_is_off_unless_configured() -> None:
    assert config().dashboard_pattern is None
    on = config(DashboardPattern="/ui/", DashboardToken="s")
    assert (on.dashboard_pattern, on.dashboard_token) == ("/ui/", "s")
    assert "dashboard_token" not in repr(on)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"DashboardPattern": "ui/"}, 'must start and end with "/"'),
        ({"DashboardPattern": "/ui"}, 'must start and end with "/"'),
        ({"DashboardPattern": "/", "StatsPattern": "/"}, "is already served"),
        ({"DashboardToken": 12}, "expected a string, got a number"),
    ],
)
def test_bad_dashboard_settings(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config(**settings)


def test_history_types_are_reserved() -> None:
    with pytest.raises(ConfigError, match="collide"):
        config(Tasks=[{"Type": "history:1", "Script": "/bin/true"}])


def test_redis_away_is_a_503_and_one_line_in_the_log(
    link: MemoryLink, clock: Clock, logged: list[LogEvent]
) -> None:
    def away(*command: Any) -> Deferred[Any]:
        return fail(ConnectionError("not connected to Redis"))

    link.execute = away  # type: ignore[method-assign]
    response, body = get(client(link, clock), "")
    assert response.code == 503
    assert "try again" in body
    warnings = [e for e in logged if "Redis did not answer" in e.get("log_format", "")]
    assert len(warnings) == 1 and "log_failure" not in warnings[0]
