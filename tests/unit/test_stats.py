"""goophry_tx.stats: the JSON stats and the Prometheus metrics, served in memory."""

from __future__ import annotations

import json
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.task import Clock

from goophry_tx import __version__
from goophry_tx.outcomes import type_counters
from goophry_tx.stats import Stats, StatsResource
from tests.unit.fakes import success_result_of


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1000)  # the clock does not start at zero
    return clock


@pytest.fixture
def stats(clock: Clock) -> Stats:
    return Stats(clock, type_counters(["mail", 'odd "type"']))


def client(stats: Stats, pattern: str = "/stats/", metrics: str = "/metrics") -> StubTreq:
    return StubTreq(StatsResource(stats, pattern, metrics))


def get(http: StubTreq, path: str) -> tuple[Any, bytes]:
    response = success_result_of(http.get(f"http://stats.test{path}", allow_redirects=False))
    return response, success_result_of(response.content())


def test_json_has_the_originals_fields_from_the_start(stats: Stats, clock: Clock) -> None:
    clock.advance(42.9)
    response, body = get(client(stats), "/stats/")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    data = json.loads(body)
    assert data["Runtime"] == 42
    assert data["TaskCount"] == {"mail": 0, 'odd "type"': 0}
    assert data["Version"] == __version__
    assert list(data)[:3] == ["Runtime", "TaskCount", "Version"]


def test_json_counts_follow_the_counters(stats: Stats, clock: Clock) -> None:
    mail = stats.types["mail"]
    mail.started, mail.running, mail.succeeded, mail.failed, mail.invalid = 5, 1, 3, 1, 2
    stats.redis_connected = lambda: True
    clock.advance(3600)
    data = json.loads(get(client(stats), "/stats/")[1])
    assert data["Runtime"] == 3600
    assert data["TaskCount"]["mail"] == 5
    assert data["Running"]["mail"] == 1
    assert data["Succeeded"]["mail"] == 3
    assert data["Failed"]["mail"] == 1
    assert data["Invalid"]["mail"] == 2
    assert data["RedisConnected"] is True


@pytest.mark.parametrize("path", ["/stats/", "/stats/x", "/stats/x/y?z=1"])
def test_a_pattern_ending_in_slash_matches_its_subtree(stats: Stats, path: str) -> None:
    response, body = get(client(stats), path)
    assert response.code == 200
    assert "TaskCount" in json.loads(body)


def test_a_subtree_pattern_asked_without_its_slash_redirects(stats: Stats) -> None:
    response, _ = get(client(stats), "/stats")
    assert response.code == 301
    assert response.headers.getRawHeaders("location") == ["/stats/"]


@pytest.mark.parametrize("path", ["/", "/other", "/stat", "/statsx", "/metrics/"])
def test_other_paths_are_404(stats: Stats, path: str) -> None:
    response, body = get(client(stats), path)
    assert response.code == 404
    assert body == b"404 page not found\n"


def test_a_pattern_without_slash_matches_only_itself(stats: Stats) -> None:
    http = client(stats, pattern="/stats")
    assert get(http, "/stats")[0].code == 200
    assert get(http, "/stats/")[0].code == 404
    assert get(http, "/stats/x")[0].code == 404


def test_the_default_pattern_matches_everything(stats: Stats) -> None:
    http = client(stats, pattern="/")
    for path in ("/", "/anything", "/a/b"):
        assert get(http, path)[0].code == 200


def test_metrics_in_the_prometheus_text_format(stats: Stats, clock: Clock) -> None:
    stats.types["mail"].started = 7
    stats.types["mail"].seconds = 1.5
    clock.advance(12)
    response, body = get(client(stats, pattern="/"), "/metrics")
    assert response.code == 200
    [content_type] = response.headers.getRawHeaders("content-type")
    assert content_type.startswith("text/plain; version=0.0.4")
    lines = body.decode().splitlines()
    assert "# TYPE goophry_tasks_started_total counter" in lines
    assert 'goophry_tasks_started_total{type="mail"} 7' in lines
    assert 'goophry_tasks_started_total{type="odd \\"type\\""} 0' in lines
    assert 'goophry_task_duration_seconds_total{type="mail"} 1.5' in lines
    assert "# TYPE goophry_tasks_running gauge" in lines
    assert "goophry_redis_connected 0" in lines
    assert "goophry_uptime_seconds 12" in lines
    assert body.endswith(b"\n")
    # Every sample belongs to a metric declared before it.
    declared: set[str] = set()
    for line in lines:
        if line.startswith("# TYPE "):
            declared.add(line.split()[2])
        elif not line.startswith("#"):
            assert line.split("{")[0].split(" ")[0] in declared, line


def test_a_custom_metrics_path(stats: Stats) -> None:
    http = client(stats, metrics="/prom")
    assert b"# TYPE goophry_tasks_started_total counter" in get(http, "/prom")[1]
    assert get(http, "/metrics")[0].code == 404


def test_head_gets_headers_without_a_body(stats: Stats) -> None:
    response = success_result_of(client(stats).head("http://stats.test/stats/"))
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    assert success_result_of(response.content()) == b""


def test_paths_are_cleaned_and_decoded_as_gos_mux_does(stats: Stats) -> None:
    http = client(stats, pattern="/stats")
    response, _ = get(http, "/x/../stats")
    assert response.code == 301
    assert response.headers.getRawHeaders("location") == ["/stats"]
    response, _ = get(http, "//stats")
    assert (response.code, response.headers.getRawHeaders("location")) == (301, ["/stats"])
    response, body = get(http, "/st%61ts")
    assert response.code == 200 and "TaskCount" in json.loads(body)


def test_a_metrics_pattern_with_a_slash_serves_its_subtree(stats: Stats) -> None:
    response, body = get(client(stats, metrics="/metrics/"), "/metrics/goophry")
    assert response.code == 200
    assert b"# TYPE goophry_tasks_started_total counter" in body


def test_any_method_is_answered_as_the_original_did(stats: Stats) -> None:
    response = success_result_of(client(stats).post("http://stats.test/stats/", data=b""))
    assert response.code == 200
    assert "TaskCount" in json.loads(success_result_of(response.content()))
